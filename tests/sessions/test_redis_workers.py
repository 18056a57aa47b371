"""Worker heartbeats in Redis: the live workers and the cluster's summed capacity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from deepresearch.llm.base import BackendState
from deepresearch.runtime.dispatch import ClusterBackend, cluster_llm
from deepresearch.sessions.redis import RedisSessionStore
from deepresearch.sessions.redis_workers import ClusterCapacity, RedisWorkers, WorkerInfo

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def info(name: str, slots: int, running: int) -> WorkerInfo:
    return WorkerInfo(name=name, slots=slots, running=running, started_at=NOW, beat_at=NOW)


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[RedisWorkers]:
    store = RedisSessionStore(redis_url)
    await store.open()
    yield RedisWorkers(store.client, store.keys)
    await store.close()


async def test_live_workers_and_their_summed_capacity(workers: RedisWorkers) -> None:
    assert await workers.capacity() == ClusterCapacity(workers=0, slots=0, running=0)
    await workers.beat(info("gpu-a:1", slots=8, running=3), ttl=30)
    await workers.beat(info("gpu-b:1", slots=4, running=4), ttl=30)
    assert [w.name for w in await workers.alive()] == ["gpu-a:1", "gpu-b:1"]
    assert await workers.capacity() == ClusterCapacity(workers=2, slots=12, running=7)
    await workers.beat(info("gpu-a:1", slots=8, running=0), ttl=30)  # the latest beat counts
    assert await workers.capacity() == ClusterCapacity(workers=2, slots=12, running=4)
    assert await workers.alive() == [info("gpu-a:1", 8, 0), info("gpu-b:1", 4, 4)]


async def test_a_worker_that_stops_beating_drops_out(workers: RedisWorkers) -> None:
    await workers.beat(info("steady", slots=8, running=1), ttl=30)
    await workers.beat(info("dying", slots=4, running=2), ttl=0.05)
    while True:  # until its last beat has expired
        if [w.name for w in await workers.alive()] == ["steady"]:
            break
        await asyncio.sleep(0.01)
    assert await workers.capacity() == ClusterCapacity(workers=1, slots=8, running=1)


async def test_a_worker_that_leaves_is_gone_at_once(workers: RedisWorkers) -> None:
    await workers.beat(info("leaving", slots=8, running=0), ttl=30)
    await workers.leave("leaving")
    assert await workers.alive() == []


async def test_a_beat_carries_the_workers_index_and_sandbox(workers: RedisWorkers) -> None:
    stocked = WorkerInfo(
        name="gpu-a:1",
        slots=8,
        running=0,
        started_at=NOW,
        beat_at=NOW,
        documents=1200,
        index_building=False,
        code_execution=True,
    )
    broken = WorkerInfo(
        name="gpu-b:1",
        slots=4,
        running=0,
        started_at=NOW,
        beat_at=NOW,
        index_building=True,
        index_error="OSError: disk full",
        code_execution_reason="bwrap not found",
    )
    await workers.beat(stocked, ttl=30)
    await workers.beat(broken, ttl=30)
    assert await workers.alive() == [stocked, broken]
    # A later beat replaces what the earlier one said (an error gone stays gone).
    mended = WorkerInfo(
        name="gpu-b:1", slots=4, running=0, started_at=NOW, beat_at=NOW, documents=7
    )
    await workers.beat(mended, ttl=30)
    assert (await workers.alive())[1] == mended
    assert mended.index() == {"documents": 7, "building": False, "error": None}


async def test_a_beat_from_before_the_index_fields_reads_as_nothing_known(
    workers: RedisWorkers, redis_url: str
) -> None:
    """A worker of an older version beats only its slots and sessions."""
    store = RedisSessionStore(redis_url)
    await store.open()
    try:
        key = f"{store.keys.prefix}:worker:old:1"
        await store.client.hset(  # type: ignore[misc]
            key,
            mapping={
                "slots": 2,
                "running": 1,
                "started_at": NOW.isoformat(),
                "beat_at": NOW.isoformat(),
            },
        )
        await store.client.sadd(f"{store.keys.prefix}:workers", "old:1")  # type: ignore[misc]
    finally:
        await store.close()
    [old] = await workers.alive()
    assert old == info("old:1", 2, 1)
    assert old.llm is None  # not said: it adds no backend to the cluster's view
    assert cluster_llm([old]) == []


SIM = "http://127.0.0.1:8000/v1"
GONE = "http://10.0.0.9:8000/v1"


async def test_a_beat_carries_the_workers_view_of_its_llm_backends(
    workers: RedisWorkers,
) -> None:
    calling = WorkerInfo(
        name="gpu-a:1",
        slots=8,
        running=1,
        started_at=NOW,
        beat_at=NOW,
        llm=(
            BackendState(SIM, "tongyi", True, None, limit=8, in_flight=1, ttft_ms=41.5),
            BackendState(GONE, None, False, "connection refused", kv_usage=0.25),
        ),
    )
    offline = WorkerInfo(name="gpu-b:1", slots=2, running=0, started_at=NOW, beat_at=NOW, llm=())
    await workers.beat(calling, ttl=30)
    await workers.beat(offline, ttl=30)
    assert await workers.alive() == [calling, offline]


async def test_a_beat_from_a_newer_worker_keeps_the_backend_fields_this_one_knows(
    workers: RedisWorkers, redis_url: str
) -> None:
    store = RedisSessionStore(redis_url)
    await store.open()
    try:
        await workers.beat(info("new:1", 2, 0), ttl=30)
        state = '[{"url": "%s", "model": "m", "healthy": true, "last_error": null, "new": 1}]'
        await store.client.hset(  # type: ignore[misc]
            f"{store.keys.prefix}:worker:new:1", "llm", state % SIM
        )
    finally:
        await store.close()
    [new] = await workers.alive()
    assert new.llm == (BackendState(SIM, "m", True, None),)


def test_the_cluster_counts_each_backend_once_healthy_when_some_worker_sees_it_so() -> None:
    def worker(name: str, *states: BackendState) -> WorkerInfo:
        return WorkerInfo(name, 4, 0, NOW, NOW, llm=states)

    cluster = [
        worker(
            "a:1", BackendState(SIM, "m", False, "timed out"), BackendState(GONE, "m", None, None)
        ),
        worker(
            "b:1", BackendState(SIM, "m", True, None), BackendState(GONE, "m", False, "refused")
        ),
        worker("c:1", BackendState(GONE, "m", None, None)),
    ]
    assert cluster_llm(cluster) == [
        ClusterBackend(SIM, "m", True, workers=2, workers_healthy=1, last_error="a:1: timed out"),
        ClusterBackend(GONE, "m", False, workers=3, workers_healthy=0, last_error="b:1: refused"),
    ]
    # Not used by any worker yet: neither healthy nor not.
    assert cluster_llm([worker("c:1", BackendState(GONE, "m", None, None))]) == [
        ClusterBackend(GONE, "m", None, workers=1, workers_healthy=0, last_error=None)
    ]
