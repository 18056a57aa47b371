"""Disk full during a run (the store's fault hook stands in for a full filesystem):
every stream ends with exactly one terminal event, nothing stays processing, new
requests get 503 and not 500, and everything works again once space returns."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx

from deepresearch.server import create_app
from deepresearch.services import Services
from tests.server.conftest import MakeSettings
from tests.server.hardened import serving
from tests.support import TERMINAL, SSEStream, iter_sse


def disk_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")


async def until(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)  # polling a condition with a deadline


async def test_a_full_disk_mid_run_ends_every_stream_once_and_recovers(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(max_concurrent=2, max_queue=10)
    app = create_app(settings)
    async with serving(app, settings) as url, httpx.AsyncClient(base_url=url) as client:
        services: Services = app.state.services
        streams = [SSEStream(200) for _ in range(6)]
        started = [asyncio.Event() for _ in streams]

        async def follow(n: int) -> None:
            body = {
                "question": f"tok-full{n} [sim:slow=30] [sim:rounds=4]",
                "on_disconnect": "continue",
            }
            async with client.stream("POST", "/chat/stream", json=body, timeout=60) as response:
                async for event in iter_sse(response):
                    if event is None:
                        continue
                    streams[n].events.append(event)
                    started[n].set()
                    if event.type in TERMINAL:
                        break

        tasks = [asyncio.create_task(follow(n)) for n in range(len(streams))]
        await asyncio.gather(*(event.wait() for event in started))
        services.manager.store.fault = disk_full  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

        ids = []
        for result in streams:
            terminals = [t for t in result.types if t in TERMINAL]
            assert terminals == ["error"], result.types
            assert result.types[-1] == "error"
            seqs = [event.id for event in result.events]
            assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap before the end
            ids.append(result.events[0].data["session_id"])

        # The store is still full: records read as ended all the same, reads work, and a
        # new session is refused with 503 + Retry-After rather than a 500.
        for sid in ids:
            record = (await client.get(f"/sessions/{sid}")).json()
            assert record["status"] == "failed" and "store" in record["error"]
            replay = await client.get(f"/sessions/{sid}/events")
            assert replay.status_code == 200 and '"type":"error"' in replay.text
        refused = await client.post("/chat", json={"question": "tok-refused"})
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        health = (await client.get("/health")).json()
        assert (health["active_sessions"], health["queued_sessions"]) == (0, 0)

        services.manager.store.fault = None  # type: ignore[attr-defined]
        await until(lambda: services.manager.unsettled_count == 0, "outcomes stored")
        for sid in ids:
            stored = await services.manager.store.get(sid)
            assert stored is not None and stored.status == "failed"
        again = await client.post("/chat", json={"question": "tok-again"})
        assert again.status_code == 200 and again.json()["status"] == "completed"
