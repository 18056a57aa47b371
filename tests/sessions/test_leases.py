"""Leases, in one process and in Redis: only the holder renews or releases; a lapsed
lease can be taken; a heartbeat keeps one alive and notices when it is gone; and a
worker that lost its lease can write neither events nor checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from deepresearch.errors import LeaseLost, StaleAppend
from deepresearch.sessions import StoredEvent
from deepresearch.sessions.checkpoints import Checkpoint
from deepresearch.sessions.leases import Heartbeat, Leases, LocalLeases, check_held
from deepresearch.sessions.redis import RedisSessionStore
from tests.sessions.conformance import events, record


async def lapsed(leases: Leases, session_id: str) -> None:
    """Until the session's lease has expired (its TTL is short in these tests)."""
    while True:
        if await leases.holder(session_id) is None:
            return
        await asyncio.sleep(0.005)


async def until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)


class LeaseConformance:
    async def test_only_one_holder_at_a_time(self, leases: Leases) -> None:
        assert await leases.acquire("s-1", "a", ttl=30)
        assert await leases.holder("s-1") == "a"
        assert not await leases.acquire("s-1", "b", ttl=30)
        assert await leases.acquire("s-1", "a", ttl=30)  # ours already: extended
        assert await leases.holder("s-1") == "a"
        assert await leases.acquire("s-2", "b", ttl=30)  # leases are per session

    async def test_only_the_holder_renews_or_releases(self, leases: Leases) -> None:
        await leases.acquire("s-1", "a", ttl=30)
        assert await leases.renew("s-1", "a", ttl=30)
        assert not await leases.renew("s-1", "b", ttl=30)
        assert not await leases.release("s-1", "b")
        assert await leases.holder("s-1") == "a"
        assert await leases.release("s-1", "a")
        assert await leases.holder("s-1") is None
        assert not await leases.renew("s-1", "a", ttl=30)  # released: nothing to renew
        assert await leases.acquire("s-1", "b", ttl=30)

    async def test_a_lapsed_lease_goes_to_the_next_and_stays_there(self, leases: Leases) -> None:
        await leases.acquire("s-1", "a", ttl=0.05)
        await lapsed(leases, "s-1")
        assert await leases.acquire("s-1", "b", ttl=30)
        assert not await leases.renew("s-1", "a", ttl=30)  # a late renewal steals nothing
        assert not await leases.release("s-1", "a")
        assert await leases.holder("s-1") == "b"
        await check_held(leases, "s-1", "b")
        with pytest.raises(LeaseLost):
            await check_held(leases, "s-1", "a")

    async def test_a_heartbeat_keeps_the_lease_past_its_ttl(self, leases: Leases) -> None:
        # The TTL leaves a loaded machine room for a late beat or two (a beat later than
        # the TTL would lose the lease, rightly).
        assert await leases.acquire("s-1", "a", ttl=1.0)
        async with Heartbeat(leases, "s-1", "a", ttl=1.0, interval=0.05) as beat:
            # 30 beats of 0.05 s: one and a half TTLs have passed, and the lease is still ours.
            await until(lambda: beat.renewals >= 30 or beat.lost.is_set())
            assert not beat.lost.is_set()
            assert await leases.holder("s-1") == "a"
            assert not await leases.acquire("s-1", "b", ttl=30)
        assert await leases.holder("s-1") is None  # released on exit

    async def test_a_heartbeat_notices_a_lost_lease(self, leases: Leases) -> None:
        assert await leases.acquire("s-1", "a", ttl=30)
        async with Heartbeat(leases, "s-1", "a", ttl=30, interval=0.01) as beat:
            # As if the TTL had run out while this worker stalled: another takes it.
            await leases.release("s-1", "a")
            assert await leases.acquire("s-1", "b", ttl=30)
            await asyncio.wait_for(beat.lost.wait(), 10)
        assert await leases.holder("s-1") == "b"  # not released by the loser


class TestLocalLeases(LeaseConformance):
    @pytest.fixture
    def leases(self) -> Leases:
        return LocalLeases()


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[RedisSessionStore]]:
    """Two stores on one server, each with its own connections: two workers."""
    opened = [RedisSessionStore(redis_url), RedisSessionStore(redis_url)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


class TestRedisLeases(LeaseConformance):
    @pytest.fixture
    def leases(self, stores: list[RedisSessionStore]) -> Leases:
        return stores[0].leases()


async def test_two_workers_racing_for_leases_get_one_each(
    stores: list[RedisSessionStore],
) -> None:
    first, second = stores[0].leases(), stores[1].leases()
    sessions = [f"s-{n}" for n in range(50)]
    outcomes = await asyncio.gather(
        *(
            lease.acquire(s, name, ttl=30)
            for s in sessions
            for lease, name in ((first, "first"), (second, "second"))
        )
    )
    for n, session_id in enumerate(sessions):
        won_first, won_second = outcomes[2 * n], outcomes[2 * n + 1]
        assert won_first != won_second, session_id
        assert await first.holder(session_id) == ("first" if won_first else "second")


async def test_a_worker_that_lost_its_lease_cannot_write_after_its_successor(
    stores: list[RedisSessionStore],
) -> None:
    old, new = stores
    await old.create(record("s-1", status="processing"))
    assert await old.leases().acquire("s-1", "old", ttl=30)
    await old.append("s-1", events(1, 3), lease="old")
    await old.checkpoints().save(Checkpoint("s-1", 1, 3, [{"role": "user", "content": "q"}]))
    # Its last beat, a short one (short from the start, the lease could lapse before
    # the writes above on a loaded machine); then the old worker stalls past its TTL
    # and the new one takes over where the log ends.
    assert await old.leases().renew("s-1", "old", ttl=0.05)
    await lapsed(new.leases(), "s-1")
    assert await new.leases().acquire("s-1", "new", ttl=30)
    resumed_from = await new.get("s-1")
    assert resumed_from is not None and resumed_from.last_seq == 3
    await new.append("s-1", events(4, 4, "resumed"), lease="new")
    # The old worker wakes up and carries on: every write is refused whole.
    with pytest.raises(LeaseLost):
        await old.append("s-1", events(4, 5), lease="old")
    with pytest.raises(LeaseLost):
        await old.append("s-1", events(6, 6, "completed"), lease="old")
    with pytest.raises(LeaseLost):
        await old.checkpoints().save(Checkpoint("s-1", 2, 5, []), lease="old")
    # Even unfenced, it could not overwrite a sequence number its successor wrote.
    with pytest.raises(StaleAppend):
        await old.append("s-1", events(4, 4))
    assert [(e.seq, e.type) for e in await new.events("s-1")] == [
        (1, "thinking"),
        (2, "thinking"),
        (3, "thinking"),
        (4, "resumed"),
    ]
    checkpoint = await new.checkpoints().load("s-1")
    assert checkpoint is not None and checkpoint.round == 1
    await new.append("s-1", events(5, 5), lease="new")  # the holder goes on


async def test_two_writers_of_one_sequence_number_one_wins(
    stores: list[RedisSessionStore],
) -> None:
    await stores[0].create(record("s-1"))
    for seq in range(1, 21):
        outcomes = await asyncio.gather(
            *(
                store.append("s-1", [StoredEvent(seq, "thinking", f'"writer {n}"')])
                for n, store in enumerate(stores)
            ),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "StaleAppend"]
    assert [e.seq for e in await stores[1].events("s-1")] == list(range(1, 21))


class Unreachable(LocalLeases):
    """A lease store whose renewals fail as if its server had gone away."""

    async def renew(self, session_id: str, token: str, ttl: float) -> bool:
        raise ConnectionError("store unreachable")


async def test_a_heartbeat_that_cannot_reach_its_store_gives_up_after_the_ttl() -> None:
    leases = Unreachable()
    assert await leases.acquire("s-1", "a", ttl=0.2)
    async with Heartbeat(leases, "s-1", "a", ttl=0.2, interval=0.02) as beat:
        await asyncio.wait_for(beat.lost.wait(), 10)
        assert beat.renewals == 0
