"""Fair queueing across keys over saq's lists (``TAKE`` and ``PLAN``), in-process
against a real Redis: the order workers take jobs in, the positions announced, and a
key's running quota."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from saq.job import Status

from deepresearch.config import Settings
from deepresearch.runtime.dispatch import QUEUE_FUNCTION, Cluster
from tests.redis_server import RedisServer
from tests.sessions.conformance import record


@asynccontextmanager
async def cluster_of(redis: RedisServer, tmp_path: Path, **settings: Any) -> AsyncIterator[Cluster]:
    shared = Cluster(
        Settings(
            redis_url=redis.url,
            redis_prefix=f"fair-{uuid.uuid4().hex[:8]}",
            data_dir=tmp_path,
            **settings,
        )
    )
    await shared.open()
    try:
        yield shared
    finally:
        await shared.close()


async def submit(cluster: Cluster, sid: str, owner: str, minute: int) -> None:
    """What an API node does: the record, then the job (keyed by the session id)."""
    await cluster.store.create(record(sid, minutes=minute, owner=owner))
    await cluster.queue.enqueue(QUEUE_FUNCTION, key=sid, session_id=sid)


async def take(cluster: Cluster) -> str | None:
    job = await cluster.queue.dequeue(timeout=0.01)
    return None if job is None else job.key


async def takes(cluster: Cluster, n: int) -> list[str | None]:
    return [await take(cluster) for _ in range(n)]


def in_order(positions: dict[str, int]) -> list[str]:
    return sorted(positions, key=positions.__getitem__)


async def test_the_next_job_goes_to_the_key_with_fewest_running(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster_of(durable_redis, tmp_path) as cluster:
        # Alice posts three, then Bob two, then Carol one.
        posted = ["a1", "a2", "a3", "b1", "b2", "c1"]
        owners = {"a": "alice", "b": "bob", "c": "carol"}
        for minute, sid in enumerate(posted):
            owner = owners[sid[0]]
            await submit(cluster, sid, owner, minute)
        planned = in_order(await cluster.queue.positions())
        assert planned == ["a1", "b1", "c1", "a2", "b2", "a3"]
        # Workers take them in that order, and positions stay true as they do.
        assert await take(cluster) == "a1"
        assert in_order(await cluster.queue.positions()) == ["b1", "c1", "a2", "b2", "a3"]
        assert await takes(cluster, 6) == ["b1", "c1", "a2", "b2", "a3", None]


async def test_one_key_with_keys_off_is_first_come_first_served(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster_of(durable_redis, tmp_path) as cluster:
        for minute, sid in enumerate(["s1", "s2", "s3"]):
            await cluster.store.create(record(sid, minutes=minute))
            await cluster.queue.enqueue(QUEUE_FUNCTION, key=sid, session_id=sid)
        assert await cluster.queue.positions() == {"s1": 1, "s2": 2, "s3": 3}
        assert await takes(cluster, 4) == ["s1", "s2", "s3", None]


async def test_a_key_at_its_running_quota_waits_while_others_go(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster_of(
        durable_redis, tmp_path, api_keys=["key-for-alice-1"], max_running_per_key=1
    ) as cluster:
        for minute, (sid, owner) in enumerate([("a1", "alice"), ("a2", "alice"), ("b1", "bob")]):
            await submit(cluster, sid, owner, minute)
        assert await take(cluster) == "a1"
        assert await take(cluster) == "b1"
        # A slot is free, but Alice has one running: hers waits, position 1 all the same.
        assert await take(cluster) is None
        assert await cluster.queue.positions() == {"a2": 1}
        # Her first ends (saq takes it off its active list): her second may start.
        job = await cluster.queue.job("a1")
        assert job is not None
        await cluster.queue.finish(job, Status.COMPLETE)
        assert await take(cluster) == "a2"


async def served(cluster: Cluster) -> dict[str, str]:
    """``p:served``: each remembered owner's last service (a counter)."""
    key = f"{cluster.store.keys.prefix}:served"
    return cast("dict[str, str]", await cluster.store.client.hgetall(key))


async def finish(cluster: Cluster, sid: str) -> None:
    job = await cluster.queue.job(sid)
    assert job is not None
    await cluster.queue.finish(job, Status.COMPLETE)


async def test_owners_with_nothing_queued_or_running_are_forgotten(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster_of(durable_redis, tmp_path, api_keys=["key-for-alice-1"]) as cluster:
        for minute, (sid, owner) in enumerate([("a1", "alice"), ("b1", "bob"), ("c1", "carol")]):
            await submit(cluster, sid, owner, minute)
        assert await takes(cluster, 3) == ["a1", "b1", "c1"]
        assert set(await served(cluster)) == {"alice", "bob", "carol"}
        for sid in ("a1", "b1", "c1"):
            await finish(cluster, sid)
        # The next take forgets the three: nothing of theirs is queued or running.
        await submit(cluster, "d1", "dave", 3)
        assert await take(cluster) == "d1"
        assert set(await served(cluster)) == {"dave"}


async def test_an_idle_owner_served_after_a_waiting_one_is_remembered(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    """Forgetting Xavier while Yvonne waits (served before him) would let him go first
    when he comes back; he is kept until every active owner was served after him."""
    async with cluster_of(
        durable_redis, tmp_path, api_keys=["key-for-alice-1"], max_running_per_key=1
    ) as cluster:
        await submit(cluster, "y1", "yvonne", 0)
        await submit(cluster, "y2", "yvonne", 1)
        assert await take(cluster) == "y1"  # y2 waits behind her quota
        await submit(cluster, "x1", "xavier", 2)
        assert await take(cluster) == "x1"
        await finish(cluster, "x1")  # Xavier has nothing queued or running now
        await submit(cluster, "z1", "zoe", 3)
        assert await take(cluster) == "z1"
        assert set(await served(cluster)) == {"xavier", "yvonne", "zoe"}
        # Yvonne's first ends; Xavier asks again: she was served before him, she goes.
        await finish(cluster, "y1")
        await submit(cluster, "x2", "xavier", 4)
        assert in_order(await cluster.queue.positions()) == ["y2", "x2"]
        assert await takes(cluster, 2) == ["y2", "x2"]
