"""The offline digest over HTTP: citations numbered as readers expect, and an honest nothing."""

from __future__ import annotations

import re

import httpx

from tests.server.conftest import MakeSettings
from tests.support import collect, running_app


async def test_post_chat_cites_one_to_n_in_order_of_first_use(
    make_settings: MakeSettings,
) -> None:
    async with (
        running_app(make_settings(llm_url=[])) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        reply = await client.post("/chat", json={"question": "How is hypertension treated?"})
        assert reply.status_code == 200
        body = reply.json()
        assert body["status"] == "completed"
        ids = [c["id"] for c in body["citations"]]
        assert ids == [str(n) for n in range(1, len(ids) + 1)] and ids
        first_use = list(dict.fromkeys(re.findall(r"\[(\d+)\]", body["answer"])))
        assert first_use == ids
        assert "Thiazide diuretics" in body["answer"]
        record = (await client.get(f"/sessions/{body['session_id']}")).json()
        assert record["citations"] == body["citations"] and record["answer"] == body["answer"]


async def test_a_question_the_index_cannot_answer_gets_no_citations(
    make_settings: MakeSettings,
) -> None:
    async with (
        running_app(make_settings(llm_url=[])) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        result = await collect(
            client, "POST", "/chat/stream", json={"question": "What is the capital of France?"}
        )
        assert result.types[-2:] == ["final_answer", "completed"]
        final = next(e for e in result.events if e.type == "final_answer").data
        assert final["answer_data"]["citations"] == []
        assert "No evidence found" in final["answer_data"]["answer"]
