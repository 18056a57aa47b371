"""A second delivery of a session's job waits for its lease at most one TTL: it gets a
dead holder's lease once it lapses, and leaves a live holder's session alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from deepresearch.runtime.dispatch import take_lease
from deepresearch.sessions.leases import Heartbeat
from deepresearch.sessions.redis import RedisSessionStore
from deepresearch.sessions.redis_leases import RedisLeases
from tests.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

TTL = 1.0


@pytest.fixture
async def leases(redis_url: str) -> AsyncIterator[RedisLeases]:
    store = RedisSessionStore(redis_url, prefix="lw")
    await store.open()
    try:
        yield store.leases()
    finally:
        await store.close()


async def test_a_lapsed_lease_is_taken_over(leases: RedisLeases) -> None:
    assert await leases.acquire("s1", "dead-worker", TTL)  # and then it never renews
    assert await take_lease(leases, "s1", "next-worker", TTL)
    assert await leases.holder("s1") == "next-worker"


async def test_a_lease_its_holder_keeps_renewing_is_left_alone(leases: RedisLeases) -> None:
    assert await leases.acquire("s2", "live-worker", TTL)
    # Frequent beats: the lease lapses only if this process stalls for most of a TTL.
    async with Heartbeat(leases, "s2", "live-worker", TTL, interval=TTL / 10) as beat:
        assert not await take_lease(leases, "s2", "duplicate", TTL)
        assert not beat.lost.is_set()
        assert await leases.holder("s2") == "live-worker"


async def test_a_lease_released_meanwhile_is_taken_at_once(leases: RedisLeases) -> None:
    assert await leases.acquire("s3", "node:moment", TTL * 10)

    async def release_soon() -> None:
        await asyncio.sleep(0.2)  # the node writes its one event, then lets go
        await leases.release("s3", "node:moment")

    releaser = asyncio.create_task(release_soon())
    assert await take_lease(leases, "s3", "worker", TTL * 10)
    await releaser
    assert await leases.holder("s3") == "worker"
