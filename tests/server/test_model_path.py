"""The model path over real HTTP: cancelling aborts the backend request, /health shows the
backends' limits without secrets, and a client may ask for deltas only."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.server.conftest import MakeSettings
from tests.server.test_sessions import health, stream, wait_for_status
from tests.support import Process, collect, running_app


async def sim_in_flight(sim: Process) -> int:
    async with httpx.AsyncClient() as client:
        stats = (await client.get(sim.url.removesuffix("/v1") + "/stats")).json()
    return int(stats["in_flight"])


async def until(condition, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``condition()`` to hold, polling; fail after ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)  # the simulator is another process: poll it


async def test_cancelling_a_session_closes_its_backend_request(
    make_settings: MakeSettings, sim: Process
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-hang [sim:hang]", "on_disconnect": "continue"}
        first = await collect(client, "POST", "/chat/stream", json=body, limit=1)
        session_id = first.events[0].data["session_id"]

        async def generating() -> bool:
            return await sim_in_flight(sim) == 1

        await until(generating)
        cancelled = await client.delete(f"/sessions/{session_id}")
        assert cancelled.status_code == 200

        async def closed() -> bool:
            return await sim_in_flight(sim) == 0

        await until(closed)  # the simulator saw the client leave: nothing generates for nobody
        assert await wait_for_status(client, session_id, "cancelled") == "cancelled"


async def test_health_shows_each_backends_limit_and_load_but_no_credentials(
    make_settings: MakeSettings, sim: Process
) -> None:
    secret_url = sim.url.replace("http://", "http://user:s3cret@")
    settings = make_settings(llm_url=[secret_url], max_concurrent="auto")
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        result = await stream(client, {"question": "tok-health"})
        assert result.types[-1] == "completed"
        state = await health(client)
        (backend,) = state["llm"]["backends"]
        assert "s3cret" not in json.dumps(state) and backend["url"] == sim.url
        assert backend["healthy"] is True and backend["in_flight"] == 0
        assert backend["limit"] >= 1 and backend["ttft_ms"] is not None
        assert state["max_concurrent"] >= 2  # auto: the sum of the limits, at least the floor
        metrics = (await client.get("/metrics")).text
        assert "deepresearch_backend_call_limit{" in metrics and "s3cret" not in metrics


async def test_a_client_may_ask_for_deltas_only(make_settings: MakeSettings, sim: Process) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-deltas"}
        whole = await collect(client, "POST", "/chat/stream", json=body)
        session_id = whole.events[0].data["session_id"]
        pieces = await collect(client, "GET", f"/sessions/{session_id}/events?deltas=true")
        answer_pieces = [e.data for e in pieces.events if e.type == "final_answer_chunk"]
        answer_whole = [e.data for e in whole.events if e.type == "final_answer_chunk"]
        assert answer_pieces and all(piece["content"] == "" for piece in answer_pieces)
        assert "".join(p["delta"] for p in answer_pieces) == answer_whole[-1]["content"]
        refused = await client.get(f"/sessions/{session_id}/events?deltas=perhaps")
        assert refused.status_code == 422 and "deltas" in refused.text
