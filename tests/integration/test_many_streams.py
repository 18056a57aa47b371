"""Fifty concurrent streams against a real server process and the LLM simulator."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import httpx

from tests.support import SSEStream, collect, server, simulator, write_corpus

STREAMS = 50
SLOTS = 4
TOKEN = re.compile(r"tok-[A-Za-z0-9]+")


def tokens_in(text: str, own: str) -> set[str]:
    """The tokens ``text`` names. Streamed text is sent as far as it has come, which
    may be part-way through a token: one cut off at the very end counts as the
    stream's own token when it begins it."""
    found = set()
    for match in TOKEN.finditer(text):
        word = match.group()
        found.add(own if match.end() == len(text) and own.startswith(word) else word)
    return found


async def test_fifty_streams_stay_isolated_and_the_backend_sees_at_most_the_slots(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with (
        simulator("--token-delay-ms", "2") as sim,
        server(
            tmp_path / "data",
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=sim.url,
            DEEPRESEARCH_MAX_CONCURRENT=str(SLOTS),
            DEEPRESEARCH_MAX_QUEUE=str(STREAMS),
        ) as app,
    ):
        tokens = [f"tok-{secrets.token_hex(4)}" for _ in range(STREAMS)]
        limits = httpx.Limits(max_connections=STREAMS + 5)
        async with httpx.AsyncClient(base_url=app.url, timeout=120, limits=limits) as client:
            results: list[SSEStream] = await asyncio.gather(
                *(
                    collect(
                        client,
                        "POST",
                        "/chat/stream",
                        json={"question": f"{token}: question number {n} about diabetes care?"},
                    )
                    for n, token in enumerate(tokens)
                )
            )
            stats = (await client.get(sim.url.removesuffix("/v1") + "/stats")).json()
            health = (await client.get("/health")).json()

    assert stats["max_in_flight"] <= SLOTS
    assert stats["max_in_flight"] >= 2  # the slots were really used side by side
    assert (health["active_sessions"], health["queued_sessions"]) == (0, 0)
    session_ids = set()
    queued_streams = 0
    for token, result in zip(tokens, results, strict=True):
        assert result.status == 200
        assert result.types[-1] == "completed", result.types
        own_id = result.events[0].data["session_id"]
        session_ids.add(own_id)
        assert all(event.data["session_id"] == own_id for event in result.events)
        for event in result.events:
            if event.type in {"thinking", "final_answer_chunk"}:
                assert tokens_in(event.data["content"], token) <= {token}
            if event.type == "final_answer":
                assert set(TOKEN.findall(event.data["content"])) <= {token}
        final = next(e for e in result.events if e.type == "final_answer").data
        assert TOKEN.findall(final["answer_data"]["answer"]) == [token]
        positions = [e.data["position"] for e in result.events if e.type == "queued"]
        if positions:
            queued_streams += 1
            assert positions == sorted(positions, reverse=True) and positions[-1] >= 1
    assert len(session_ids) == STREAMS
    assert queued_streams >= STREAMS - SLOTS - 2


async def test_the_served_process_runs_python_in_its_sandbox(tmp_path: Path) -> None:
    # The served process runs on uvicorn's uvloop, whose subprocesses differ from asyncio's.
    corpus = write_corpus(tmp_path / "corpus")
    with (
        simulator() as sim,
        server(
            tmp_path / "data",
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=sim.url,
            # Not root, the server runs code as its own user only when allowed to.
            DEEPRESEARCH_PYTHON_SAME_USER="true",
        ) as app,
    ):
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
            result = await collect(
                client, "POST", "/chat/stream", json={"question": "tok-py [sim:python]"}
            )
    ran = next(e for e in result.events if e.type == "tool_result").data
    assert ran["tool_name"] == "PythonInterpreter" and "42" in ran["result"]
