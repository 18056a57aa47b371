"""The follower on its own: the wire events of a session from the real SQLite event
log alone (replay after Last-Event-ID, then the blocking tail until the terminal
event), heartbeats when idle, and a terminal event the store never took."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepresearch.events import utc_now
from deepresearch.runtime.follower import Follower, LocalTail
from deepresearch.sessions.records import SessionRecord, StoredEvent
from deepresearch.sessions.sqlite import SqliteSessionStore


class Watched(SqliteSessionStore):
    """The real store, saying when a follower waits in its tail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tailing = asyncio.Event()

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        self.tailing.set()
        return await super().tail(session_id, after, timeout)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Watched]:
    store = Watched(tmp_path / "sessions.sqlite")
    await store.open()
    await store.create(SessionRecord(id="f-1", question="q", status="queued", created_at=utc_now()))
    yield store
    await store.close()


def row(seq: int, kind: str = "round_start") -> StoredEvent:
    return StoredEvent(seq, kind, json.dumps({"type": kind, "seq": seq}))


async def collect(follower: Follower, after: int = 0, idle: float | None = None) -> list[int]:
    return [e.seq if e is not None else 0 async for e in follower.follow("f-1", after, idle)]


async def test_it_replays_after_the_last_event_id_then_tails_until_the_terminal_event(
    store: Watched,
) -> None:
    await store.append("f-1", [row(n) for n in range(1, 4)])
    follower = Follower(store, running=lambda _: _true())
    reading = asyncio.create_task(collect(follower, after=1))
    await store.tailing.wait()  # caught up: the follower waits for more
    await store.append("f-1", [row(4)])
    await store.append("f-1", [row(5, "completed")])
    await store.append("f-1", [row(6)])  # never: nothing follows a terminal event
    assert await reading == [2, 3, 4, 5]


async def test_a_long_log_is_replayed_a_page_at_a_time(
    store: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deepresearch.runtime.follower.READ_PAGE", 10)
    await store.append("f-1", [row(n) for n in range(1, 26)] + [row(26, "completed")])
    pages: list[int] = []
    events = store.events

    async def counted(session_id: str, after: int = 0, limit: int | None = None) -> list:  # type: ignore[type-arg]
        pages.append(after)
        return await events(session_id, after, limit)

    monkeypatch.setattr(store, "events", counted)
    assert await collect(Follower(store, running=lambda _: _true())) == list(range(1, 27))
    assert pages == [0, 10, 20]


async def test_an_idle_session_gets_heartbeats(store: Watched) -> None:
    follower = Follower(store, running=lambda _: _true(), recheck=0.01)
    beats = 0
    async for event in follower.follow("f-1", 0, idle=0.02):
        if event is None:
            beats += 1
            if beats == 3:
                await store.append("f-1", [row(1, "cancelled")])
        else:
            assert event.type == "cancelled"
    assert beats == 3


async def test_a_terminal_event_the_store_did_not_take_still_ends_the_stream(
    store: Watched,
) -> None:
    await store.append("f-1", [row(1), row(2)])
    ended = row(3, "error")
    pending: dict[str, StoredEvent] = {}
    follower = Follower(store, running=lambda _: _true(), pending=pending.get, recheck=0.01)
    reading = asyncio.create_task(collect(follower))
    await store.tailing.wait()
    pending["f-1"] = ended  # decided, its write failed (a full disk)
    assert await reading == [1, 2, 3]


async def test_a_session_no_longer_running_ends_at_the_end_of_its_log(
    store: Watched,
) -> None:
    await store.append("f-1", [row(1), row(2)])

    async def stopped(_: str) -> bool:
        return False

    assert await collect(Follower(store, running=stopped)) == [1, 2]


async def test_by_default_it_follows_while_the_record_is_unfinished(
    store: Watched,
) -> None:
    from deepresearch.sessions.records import SessionChanges

    await store.append("f-1", [row(1)], SessionChanges(status="processing"))
    reading = asyncio.create_task(collect(Follower(store, recheck=0.01)))
    await store.tailing.wait()
    await store.append("f-1", [row(2, "completed")], SessionChanges(status="completed"))
    assert await reading == [1, 2]


async def _true() -> bool:
    return True


class Counted(Watched):
    """Counts the reads that reach the store."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        self.reads += 1
        return await super().events(session_id, after, limit)


async def test_local_tail_serves_a_live_sessions_rows_from_memory(tmp_path: Path) -> None:
    store = Counted(tmp_path / "sessions.sqlite")
    await store.open()
    try:
        local = LocalTail(store, keep=4)
        local.open("f-1")
        for seq in (1, 2, 3):
            await store.append("f-1", [row(seq)])
            local.add("f-1", row(seq))
        reads = store.reads
        assert [r.seq for r in await local.tail("f-1", 1, 1.0)] == [2, 3]
        waiting = asyncio.create_task(local.tail("f-1", 3, 10.0))
        await asyncio.sleep(0)  # it waits in memory, not on the store
        await store.append("f-1", [row(4)])
        local.add("f-1", row(4))
        assert [r.seq for r in await waiting] == [4]
        assert store.reads == reads  # neither read the store

        for seq in (5, 6, 7, 8):
            await store.append("f-1", [row(seq)])
            local.add("f-1", row(seq))
        # Further behind than the rows kept: the store answers.
        assert [r.seq for r in await local.tail("f-1", 2, 1.0)][:2] == [3, 4]
        assert store.reads == reads + 1

        await store.append("f-1", [row(9), row(10)])
        local.add("f-1", row(10))  # 9 was stored but never handed over
        assert [r.seq for r in await local.tail("f-1", 8, 1.0)] == [9, 10]

        waiting = asyncio.create_task(local.tail("f-1", 10, 10.0))
        await asyncio.sleep(0)
        await store.append("f-1", [row(11, "completed")])
        local.close("f-1")  # ended here: the store has the rest
        assert [r.seq for r in await waiting] == [11]
    finally:
        await store.close()
