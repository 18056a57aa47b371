"""The Redis store passes the store and event-log conformance suites, against a real
redis-server, and keeps its own promises: sequence-checked appends, retention by TTL."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deepresearch.errors import SessionConflict, SessionNotFound, StaleAppend
from deepresearch.sessions import SessionChanges, SessionStore
from deepresearch.sessions.redis import RedisSessionStore
from tests.redis_server import RedisServer
from tests.sessions.conformance import Reopen, StoreConformance, events, record
from tests.sessions.eventlog_conformance import EventLogConformance, TailWaiting


@pytest.fixture
async def stores() -> AsyncIterator[list[RedisSessionStore]]:
    opened: list[RedisSessionStore] = []
    yield opened
    for store in opened:
        await store.close()


@pytest.fixture
async def store(redis_url: str, stores: list[RedisSessionStore]) -> RedisSessionStore:
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


# -- Redis's own promises -------------------------------------------------------------


async def ttl_ms(store: RedisSessionStore, key: str) -> int:
    return int(await store.client.pttl(key))


async def test_a_finished_conversation_expires_by_ttl(
    redis_url: str, stores: list[RedisSessionStore]
) -> None:
    # Short, so that the test sees the keys expire; long enough that they are still
    # there (counting down) when it looks right after the last write on a loaded machine.
    store = RedisSessionStore(redis_url, retention=timedelta(seconds=1))
    await store.open()
    stores.append(store)
    await store.create(record("talk", minutes=0, owner="o"))
    await store.create(record("talk-2", minutes=1, conversation_id="talk", turn=2, owner="o"))
    await store.append("talk", events(1, 2), SessionChanges(status="completed", answer="A"))
    # One turn still open: nothing counts down yet.
    assert await ttl_ms(store, store.keys.events("talk")) == -1
    await store.append("talk-2", events(1, 1), SessionChanges(status="failed"))
    for session_id in ("talk", "talk-2"):
        assert await ttl_ms(store, store.keys.events(session_id)) > 0
        assert await ttl_ms(store, store.keys.session(session_id)) > 0
    while True:  # the events expire by themselves; the listing then drops the records
        if not await store.client.exists(store.keys.events("talk")):
            break
        await asyncio.sleep(0.01)
    assert await store.list_sessions(limit=10) == ([], 0)
    assert await store.list_conversations(limit=10, owner="o") == ([], 0)
    assert await store.get("talk") is None and await store.conversation("talk") == []
    assert await store.latest_answered(owner="o", client=None) is None
    assert await store.client.keys(f"{store.keys.prefix}:*") == []  # nothing left behind


async def test_a_new_question_stops_the_countdown(
    redis_url: str, stores: list[RedisSessionStore]
) -> None:
    store = RedisSessionStore(redis_url, retention=timedelta(hours=1))
    await store.open()
    stores.append(store)
    await store.create(record("talk"))
    await store.append("talk", events(1, 1), SessionChanges(status="completed"))
    assert await ttl_ms(store, store.keys.events("talk")) > 0
    await store.create(record("talk-2", minutes=1, conversation_id="talk", turn=2))
    assert await ttl_ms(store, store.keys.events("talk")) == -1
    assert await ttl_ms(store, store.keys.session("talk")) == -1
    assert await store.purge_expired() == 0


async def test_appends_are_refused_for_a_session_that_does_not_exist(
    store: RedisSessionStore,
) -> None:
    with pytest.raises(SessionNotFound):
        await store.append("missing", events(1, 1))
    with pytest.raises(StaleAppend):  # and out-of-order batches are refused whole
        await store.create(record("s-1"))
        await store.append("s-1", [*events(1, 2), *events(2, 2)])
    assert await store.events("s-1") == []


async def test_the_store_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    store = RedisSessionStore(server.url)
    try:
        await store.open()
        await store.create(record("s-1", status="processing"))
        await store.append("s-1", events(1, 3))
        server.restart()
        await store.append("s-1", events(4, 5))  # a fresh connection; scripts loaded again
        assert [e.seq for e in await store.events("s-1")] == [1, 2, 3, 4, 5]
        stored = await store.get("s-1")
        assert stored is not None and stored.status == "processing" and stored.last_seq == 5
    finally:
        await store.close()
        server.stop()


async def test_a_write_sent_twice_is_applied_once(store: RedisSessionStore) -> None:
    """What redis-py does when a reply is lost to a dropped connection: it sends the
    same command again. Each call's write id makes the second one a no-op."""
    create, write = store._create, store._write

    async def twice(script: Any, **call: Any) -> Any:
        await script(**call)
        return await script(**call)

    store._create = functools.partial(twice, create)  # type: ignore[method-assign]
    store._write = functools.partial(twice, write)  # type: ignore[method-assign]
    await store.create(record("s-1"))  # no conflict with itself
    await store.append("s-1", events(1, 2))  # no StaleAppend against itself
    await store.append("s-1", events(3, 3), SessionChanges(status="completed"))
    assert [e.seq for e in await store.events("s-1")] == [1, 2, 3]
    store._create, store._write = create, write  # type: ignore[method-assign]
    with pytest.raises(SessionConflict):  # another call with the same id still conflicts
        await store.create(record("s-1"))
    with pytest.raises(StaleAppend):
        await store.append("s-1", events(3, 3))
