"""kill -9 mid-run with resuming turned off: finished sessions survive intact; the
interrupted one is marked failed; nothing is left processing. (With resuming on, the
default, see ``tests/e2e/test_restart_resume.py``.)"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.support import collect, server, simulator, write_corpus


async def test_kill_nine_then_restart_settles_interrupted_sessions(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    with simulator() as sim:
        env = {
            "DEEPRESEARCH_CORPUS": str(corpus),
            "DEEPRESEARCH_LLM_URL": sim.url,
            "DEEPRESEARCH_RESUME_ON_START": "false",
        }
        with server(data, **env) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                done = await collect(client, "POST", "/chat/stream", json={"question": "tok-done"})
                assert done.types[-1] == "completed"
                running = await collect(
                    client,
                    "POST",
                    "/chat/stream",
                    json={
                        "question": "tok-run [sim:slow=200] [sim:rounds=5]",
                        "on_disconnect": "continue",
                    },
                    limit=4,
                )
                assert "init" in running.types
            app.stop(signal.SIGKILL)

        with server(data, **env) as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
                done_id = done.events[0].data["session_id"]
                replay = await collect(client, "GET", f"/sessions/{done_id}/events")
                assert [e.data for e in replay.events] == [e.data for e in done.events]
                record = (await client.get(f"/sessions/{done_id}")).json()
                assert record["status"] == "completed" and "tok-done" in record["answer"]

                run_id = running.events[0].data["session_id"]
                record = (await client.get(f"/sessions/{run_id}")).json()
                assert record["status"] == "failed"
                assert "interrupted" in record["error"]
                events = await collect(client, "GET", f"/sessions/{run_id}/events")
                assert events.types[-1] == "error"
                assert [e.id for e in events.events] == list(range(1, len(events.events) + 1))

                for status in ("processing", "queued"):
                    listing = (await client.get("/sessions", params={"status": status})).json()
                    assert listing["total"] == 0
