"""Admission's checks in the create script (``Admit``), against a real Redis, with many
creates in flight at once from several clients (API nodes): the counts hold exactly,
because the check and the creation are one script."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from deepresearch.sessions import SessionChanges
from deepresearch.sessions.redis import (
    Admit,
    ConversationBusy,
    QueueFull,
    QuotaFull,
    RedisSessionStore,
)
from tests.redis_server import RedisServer
from tests.sessions.conformance import record


@pytest.fixture
async def nodes(durable_redis: RedisServer) -> AsyncIterator[list[RedisSessionStore]]:
    """Three clients of one Redis, one prefix per test: three API nodes."""
    prefix = f"admit-{uuid.uuid4().hex[:8]}"
    stores = [RedisSessionStore(durable_redis.url, prefix=prefix) for _ in range(3)]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def outcomes(calls: list[asyncio.Future[None] | asyncio.Task[None]]) -> list[str]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return sorted("ok" if r is None else type(r).__name__ for r in results)


async def test_a_keys_waiting_quota_holds_under_concurrent_creates(
    nodes: list[RedisSessionStore],
) -> None:
    admit = Admit(follow_up=False, slots=2, max_queue=100, max_queued_per_key=3)
    creates = [
        asyncio.ensure_future(nodes[n % 3].create(record(f"a-{n}", owner="alice"), admit=admit))
        for n in range(20)
    ]
    # Two free slots: two sessions start at once, three more may wait.
    assert await outcomes(creates) == ["QuotaFull"] * 15 + ["ok"] * 5
    # Another key is not held back by alice's quota.
    await nodes[0].create(record("b-0", owner="bob"), admit=admit)
    # Workers start two of alice's sessions (the slots are busy now): she has three
    # waiting, her quota. One of those ends: room for exactly one more of hers.
    queued, _ = await nodes[0].list_sessions(limit=100, offset=0, status="queued", owner="alice")
    for session in queued[:2]:
        await nodes[1].update(session.id, SessionChanges(status="processing"))
    refused = nodes[2].create(record("a-late", owner="alice"), admit=admit)
    with pytest.raises(QuotaFull):
        await refused
    await nodes[1].update(queued[2].id, SessionChanges(status="cancelled"))
    again = [
        asyncio.ensure_future(nodes[n % 3].create(record(f"c-{n}", owner="alice"), admit=admit))
        for n in range(6)
    ]
    assert await outcomes(again) == ["QuotaFull"] * 5 + ["ok"]


async def test_the_queue_bound_holds_under_concurrent_creates(
    nodes: list[RedisSessionStore],
) -> None:
    admit = Admit(follow_up=False, slots=0, max_queue=4)
    creates = [
        asyncio.ensure_future(nodes[n % 3].create(record(f"q-{n}", owner=f"k{n}"), admit=admit))
        for n in range(12)
    ]
    assert await outcomes(creates) == ["QueueFull"] * 8 + ["ok"] * 4


async def test_one_follow_up_at_a_time_in_a_conversation(
    nodes: list[RedisSessionStore],
) -> None:
    await nodes[0].create(record("first", conversation_id="conv", status="completed"))
    admit = Admit(follow_up=True, slots=-1)
    creates = [
        asyncio.ensure_future(
            nodes[n % 3].create(record(f"next-{n}", conversation_id="conv", turn=2), admit=admit)
        )
        for n in range(9)
    ]
    assert await outcomes(creates) == ["ConversationBusy"] * 8 + ["ok"]
    # Once that turn ends, the next follow-up is admitted.
    turns = await nodes[0].conversation("conv")
    running = next(turn for turn in turns if turn.status == "queued")
    with pytest.raises(ConversationBusy):
        await nodes[1].create(record("later", conversation_id="conv", turn=3), admit=admit)
    await nodes[2].update(running.id, SessionChanges(status="completed"))
    await nodes[1].create(record("later", conversation_id="conv", turn=3), admit=admit)


def test_refusals_name_their_counts() -> None:
    assert QueueFull(4).waiting == 4 and QuotaFull(3).waiting == 3
