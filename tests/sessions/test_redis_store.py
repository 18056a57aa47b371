"""The Redis store passes the store conformance suite, against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from deepresearch.sessions import SessionStore
from deepresearch.sessions.redis import RedisSessionStore
from tests.sessions.conformance import Reopen, StoreConformance


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


class TestRedisStore(StoreConformance):
    pass
