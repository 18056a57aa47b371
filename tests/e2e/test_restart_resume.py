"""kill -9 the single-process server mid-run and start it again: the session resumes
from its last completed round (the simulator is not asked for those rounds again) and
a client that comes back with ``Last-Event-ID`` gets the rest, ending in exactly one
terminal event. Real processes: ``deepresearch serve`` and the LLM simulator."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.support import TERMINAL, SSEEvent, collect, iter_sse, server, simulator, write_corpus

TOOL_ROUNDS = 4  # the simulator's rounds with a tool call; the answer comes in round 5


async def test_kill_nine_mid_run_then_restart_resumes_from_the_last_round(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    question = f"tok-resume [sim:slow=20] [sim:rounds={TOOL_ROUNDS}]"
    with simulator() as sim:
        env = {"DEEPRESEARCH_CORPUS": str(corpus), "DEEPRESEARCH_LLM_URL": sim.url}
        seen: list[SSEEvent] = []
        with server(data, **env) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                body = {"question": question, "on_disconnect": "continue"}
                async with client.stream("POST", "/chat/stream", json=body) as response:
                    assert response.status_code == 200
                    async for event in iter_sse(response):
                        if event is None:
                            continue
                        seen.append(event)
                        # Round 3 starts only once round 2's checkpoint is saved.
                        if event.type == "round_start" and event.data["round"] == 3:
                            break
            app.stop(signal.SIGKILL)
        assert not any(event.type in TERMINAL for event in seen)
        session_id = seen[0].data["session_id"]
        async with httpx.AsyncClient(
            base_url=sim.url.removesuffix("/v1"), timeout=10
        ) as sim_client:
            before = (await sim_client.get("/stats")).json()["requests"]
            assert before >= 2  # rounds 1 and 2 (and perhaps round 3's, cut off)
            (await sim_client.post("/stats/reset")).raise_for_status()

            with server(data, **env) as app:
                async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                    last = seen[-1].id
                    assert last is not None
                    rest = await collect(
                        client,
                        "GET",
                        f"/sessions/{session_id}/events",
                        headers={"Last-Event-ID": str(last)},
                    )
                    # Every stored row (the default view may leave out a streamed-text
                    # row a later one of the same text replaces).
                    replay = await collect(
                        client, "GET", f"/sessions/{session_id}/events?deltas=true"
                    )
                    record = (await client.get(f"/sessions/{session_id}")).json()
            after = (await sim_client.get("/stats")).json()["requests"]

    # The client that came back got the rest: numbers on from where it was, one
    # terminal event, last.
    assert rest.status == 200
    numbers = [e.id or 0 for e in rest.events]
    assert numbers[0] == last + 1 and numbers == sorted(set(numbers))
    assert [t for t in rest.types if t in TERMINAL] == ["completed"]
    assert rest.types[-1] == "completed"
    resumed = [e for e in rest.events if e.type == "resumed"]
    assert len(resumed) == 1
    done = resumed[0].data["round"]
    assert done >= 2
    # Only the rounds after the checkpoint asked the model: none of rounds 1..done again.
    assert after == TOOL_ROUNDS + 1 - done
    assert [e.data["round"] for e in rest.events if e.type == "round_start"] == list(
        range(done + 1, TOOL_ROUNDS + 2)
    )
    # The whole log: one session_start, one resumed, one terminal event, numbers contiguous.
    assert [e.id for e in replay.events] == list(range(1, len(replay.events) + 1))
    assert replay.types.count("session_start") == 1 and replay.types[0] == "session_start"
    assert replay.types.count("resumed") == 1
    assert [t for t in replay.types if t in TERMINAL] == ["completed"]
    assert record["status"] == "completed" and "tok-resume" in record["answer"]


async def test_kill_nine_in_the_first_round_resumes_with_the_requests_settings(
    tmp_path: Path,
) -> None:
    """Killed before any checkpoint: the record keeps the request's generation
    settings, so the model is asked with them after the restart too, not with the
    server's defaults (the simulator records what each request asked for)."""
    corpus = write_corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    question = "tok-firstround [sim:slow=40] [sim:rounds=1]"
    chosen = {"temperature": 0.3, "max_tokens": 999}
    with simulator() as sim:
        env = {"DEEPRESEARCH_CORPUS": str(corpus), "DEEPRESEARCH_LLM_URL": sim.url}
        with server(data, **env) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                body = {"question": question, "on_disconnect": "continue", **chosen}
                async with client.stream("POST", "/chat/stream", json=body) as response:
                    assert response.status_code == 200
                    async for event in iter_sse(response):
                        if event is None:
                            continue
                        if event.type == "session_start":
                            session_id = event.data["session_id"]
                        # The model is streaming round 1: no round has completed.
                        if event.type == "thinking":
                            assert event.data["round"] == 1
                            break
            app.stop(signal.SIGKILL)
        with server(data, **env) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                replay = await collect(client, "GET", f"/sessions/{session_id}/events")
        async with httpx.AsyncClient(
            base_url=sim.url.removesuffix("/v1"), timeout=10
        ) as sim_client:
            asked = (await sim_client.get("/stats")).json()["asked"]["tok-firstround"]

    resumed = [e for e in replay.events if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["round"] == 0  # no checkpoint to go on from
    assert [t for t in replay.types if t in TERMINAL] == ["completed"]
    # Round 1 before the kill, then rounds 1 and 2 again after it: all with the request's.
    assert len(asked) >= 3
    assert {(a["temperature"], a["max_tokens"]) for a in asked} == {(0.3, 999)}
