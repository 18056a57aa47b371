"""Two backends, one killed while it streams: its sessions move to the other and finish."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from tests.support import Process, SSEStream, collect, server, simulator, write_corpus

SESSIONS = 6


async def test_killing_a_backend_mid_stream_loses_no_session(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with (
        simulator("--token-delay-ms", "40") as doomed,
        simulator("--token-delay-ms", "2") as spare,
        server(
            tmp_path / "data",
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=f"{doomed.url},{spare.url}",
            DEEPRESEARCH_LLM_MODEL="sim-model",
            DEEPRESEARCH_MAX_CONCURRENT=str(SESSIONS),
        ) as app,
    ):
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
            await run_and_kill(client, doomed)


async def run_and_kill(client: httpx.AsyncClient, doomed: Process) -> None:
    questions = [f"tok-kill{n} how is asthma treated? [sim:rounds=2]" for n in range(SESSIONS)]
    runs = [
        asyncio.create_task(collect(client, "POST", "/chat/stream", json={"question": q}))
        for q in questions
    ]
    # Wait until the slow backend is in the middle of streaming someone's reply.
    async with httpx.AsyncClient() as probe:
        stats_url = doomed.url.removesuffix("/v1") + "/stats"
        for _ in range(500):
            if (await probe.get(stats_url)).json()["in_flight"] > 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the first backend never got a call")
    await asyncio.sleep(0.1)  # most likely part-way through a reply; either way none is lost
    doomed.stop(signal.SIGKILL)
    results: list[SSEStream] = await asyncio.gather(*runs)
    assert [r.types[-1] for r in results] == ["completed"] * SESSIONS
    for result in results:
        assert sum(t in {"completed", "error", "cancelled"} for t in result.types) == 1
    state = (await client.get("/health")).json()
    assert [b["healthy"] for b in state["llm"]["backends"]] == [False, True]
    assert (state["active_sessions"], state["queued_sessions"]) == (0, 0)
