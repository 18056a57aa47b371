"""The Redis store passes the store and event-log conformance suites, against a real
redis-server, and keeps its own promises: sequence-checked appends, retention by TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from deepresearch.sessions import SessionStore
from deepresearch.sessions.redis import RedisSessionStore
from tests.sessions.conformance import Reopen, StoreConformance
from tests.sessions.eventlog_conformance import EventLogConformance, TailWaiting


@pytest.fixture
async def stores() -> AsyncIterator[list[RedisSessionStore]]:
    opened: list[RedisSessionStore] = []
    yield opened
    for store in opened:
        await store.close()


@pytest.fixture
async def store(redis_url: str, stores: list[RedisSessionStore]) -> SessionStore:
    first = RedisSessionStore(redis_url)
    await first.open()
    stores.append(first)
    return first


@pytest.fixture
def reopen(redis_url: str, stores: list[RedisSessionStore]) -> Reopen:
    async def again() -> SessionStore:
        for store in stores:
            await store.close()
        stores.clear()
        fresh = RedisSessionStore(redis_url)
        await fresh.open()
        stores.append(fresh)
        return fresh

    return again


@pytest.fixture
def log(store: RedisSessionStore) -> RedisSessionStore:
    return store


@pytest.fixture
async def writer(redis_url: str, stores: list[RedisSessionStore]) -> RedisSessionStore:
    """A second store on the same server: a worker on another machine."""
    other = RedisSessionStore(redis_url)
    await other.open()
    stores.append(other)
    return other


@pytest.fixture
def tail_waiting(store: RedisSessionStore) -> TailWaiting:
    async def waiting() -> None:  # until the server counts a client blocked in XREAD
        while True:
            if (await store.client.info("clients"))["blocked_clients"] > 0:
                return
            await asyncio.sleep(0.001)

    return waiting


class TestRedisStore(StoreConformance):
    pass


class TestRedisEventLog(EventLogConformance):
    pass
