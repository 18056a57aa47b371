"""One node's followers served by one blocked XREAD (``TailHub``), against a real
redis-server: every subscriber gets its own session's events, in order, from where
it started; one connection is blocked however many follow; a subscriber joining
while the hub is blocked on other streams is not left waiting; Redis restarting
under the hub is survived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepresearch.sessions import StoredEvent
from deepresearch.sessions.redis import RedisSessionStore
from deepresearch.sessions.redis_tails import Subscription, TailHub
from tests.redis_server import RedisServer
from tests.sessions.conformance import events, record


@pytest.fixture
async def writer(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    """The worker side."""
    store = RedisSessionStore(redis_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def node(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    """The API node's store, whose hub serves the followers."""
    store = RedisSessionStore(redis_url)
    await store.open()
    yield store
    await store.close()


async def blocked_clients(store: RedisSessionStore) -> int:
    return int((await store.client.info("clients"))["blocked_clients"])


async def until_blocked(store: RedisSessionStore) -> None:
    """Until the hub's XREAD is blocked on the server."""
    while True:
        if await blocked_clients(store) > 0:
            return
        await asyncio.sleep(0.001)


async def read_until(subscription: Subscription, last: int) -> list[StoredEvent]:
    got: list[StoredEvent] = []
    while not got or got[-1].seq < last:
        batch = await subscription.next(timeout=10)
        assert batch, f"nothing came after {got[-1].seq if got else subscription.cursor}"
        got += batch
    return got


async def test_many_followers_one_blocked_connection(
    writer: RedisSessionStore, node: RedisSessionStore
) -> None:
    ids = [f"s-{n}" for n in range(50)]
    for session_id in ids:
        await writer.create(record(session_id))
    async with TailHub(node, block=30) as hub:
        subscriptions = [await hub.subscribe(session_id, 0) for session_id in ids]
        readers = [asyncio.create_task(read_until(s, 20)) for s in subscriptions]
        await until_blocked(node)

        async def write(session_id: str) -> None:
            for seq in range(1, 21):
                await writer.append(session_id, [StoredEvent(seq, "thinking", f'"{session_id}"')])

        await asyncio.gather(*(write(session_id) for session_id in ids))
        for session_id, got in zip(ids, await asyncio.gather(*readers), strict=True):
            assert [e.seq for e in got] == list(range(1, 21))
            assert {e.data for e in got} == {f'"{session_id}"'}
        await until_blocked(node)
        assert await blocked_clients(node) == 1  # the hub alone, for 50 followers
        for subscription in subscriptions:
            subscription.close()
        assert hub.subscriptions == 0


async def test_a_subscriber_gets_the_backlog_then_live_events(
    writer: RedisSessionStore, node: RedisSessionStore
) -> None:
    await writer.create(record("s-1"))
    await writer.append("s-1", events(1, 5))
    async with TailHub(node, block=30) as hub:
        with await hub.subscribe("s-1", after=2) as subscription:
            assert [e.seq for e in await subscription.next(timeout=10)] == [3, 4, 5]
            await writer.append("s-1", events(6, 7))
            assert [e.seq for e in await read_until(subscription, 7)] == [6, 7]
            assert await subscription.next(timeout=0.05) == []  # nothing more: timeout


async def test_a_subscriber_joining_a_blocked_hub_is_served_at_once(
    writer: RedisSessionStore, node: RedisSessionStore
) -> None:
    """With a 60 s block, only the interruption can get the newcomer served within the
    10 s the test allows."""
    await writer.create(record("early"))
    await writer.create(record("late"))
    async with TailHub(node, block=60) as hub:
        with await hub.subscribe("early", 0):
            await until_blocked(node)
            with await hub.subscribe("late", 0) as late:
                await writer.append("late", events(1, 1))
                assert [e.seq for e in await late.next(timeout=10)] == [1]


async def test_the_hub_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    writer, node = RedisSessionStore(server.url), RedisSessionStore(server.url)
    try:
        await writer.open()
        await node.open()
        await writer.create(record("s-1"))
        async with TailHub(node, block=1) as hub:
            with await hub.subscribe("s-1", 0) as subscription:
                await writer.append("s-1", events(1, 1))
                assert [e.seq for e in await subscription.next(timeout=10)] == [1]
                server.restart()
                await writer.append("s-1", events(2, 3))
                assert [e.seq for e in await read_until(subscription, 3)] == [2, 3]
    finally:
        await writer.close()
        await node.close()
        server.stop()
