"""An API node with no worker: sessions wait in saq's queue with their positions, a
queued session is cancelled with exactly one terminal event, and nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.distributed.cluster import Cluster, eventually
from tests.redis_server import RedisServer
from tests.support import Process, SSEEvent, collect, iter_sse


@pytest.fixture(scope="module")
def idle_cluster(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    cluster = Cluster(
        durable_redis, tmp_path_factory.mktemp("idle"), llm.url, corpus, prefix="idle"
    )
    try:
        cluster.start_node()
        yield cluster
    finally:
        cluster.stop()


async def test_queued_sessions_hear_their_positions_and_cancel_cleanly(
    idle_cluster: Cluster,
) -> None:
    node = idle_cluster.nodes[0].url
    async with httpx.AsyncClient(base_url=node, timeout=30) as client:
        health = (await client.get("/health")).json()
        assert health["workers"] == 0 and health["max_concurrent"] == 0
        # The node runs no sessions: no index of its own though a corpus is configured
        # (keys are off: everyone gets the details), and with no worker alive the
        # cluster has no index and runs no code.
        assert not (idle_cluster.node_dirs[0] / "index.sqlite").exists()
        assert health["index"] == {"building": False, "documents": 0, "error": None}
        assert health["code_execution"] is False
        assert health["code_execution_reason"] == "no worker is alive"

        first = await collect(
            client,
            "POST",
            "/chat/stream",
            json={"question": "tok-a", "on_disconnect": "continue"},
            limit=1,
        )
        assert first.types == ["session_start"]  # at once, with no worker about
        first_id = first.events[0].data["session_id"]
        async with client.stream(
            "POST", "/chat/stream", json={"question": "tok-b", "on_disconnect": "continue"}
        ) as second:
            events: list[SSEEvent] = []
            stream = iter_sse(second)

            async def next_event() -> SSEEvent:
                while True:
                    event = await anext(stream)
                    if event is not None:
                        events.append(event)
                        return event

            start = await next_event()
            assert start.type == "session_start" and start.id == 1
            second_id = start.data["session_id"]
            queued = await next_event()
            assert queued.type == "queued" and queued.data["position"] == 2

            listing = (await client.get("/sessions", params={"status": "queued"})).json()
            assert set(listing["active_sessions"]) >= {second_id}
            assert (await client.get("/health")).json()["queued_sessions"] == 2

            # The first one leaves the queue: the second moves up.
            cancelled = await client.delete(f"/sessions/{first_id}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            moved = await next_event()
            assert moved.type == "queued" and moved.data["position"] == 1

            gone = await client.delete(f"/sessions/{second_id}")
            assert gone.json()["status"] == "cancelled"
            end = await next_event()
            assert end.type == "cancelled"
            assert [e.id for e in events] == list(range(1, len(events) + 1))

        replay = await client.get(f"/sessions/{first_id}/events")
        types = [line for line in replay.text.splitlines() if line.startswith("data:")]
        assert sum('"type":"cancelled"' in line for line in types) == 1
        assert (await client.delete(f"/sessions/{first_id}")).status_code == 409

        async def drained() -> bool | None:
            return True if (await client.get("/health")).json()["queued_sessions"] == 0 else None

        await eventually(drained, 10, "the queue is empty")
