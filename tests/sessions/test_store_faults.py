"""Both session stores under faults, against the real thing (a SQLite file, a real
redis-server): a failed write leaves nothing and later writes succeed, a really full
store (SQLite's page limit, Redis's maxmemory) refuses writes and recovers, retention
works in batches, reads page, and a session whose writes fail mid-run ends with
exactly one terminal event and a record that says so once the store takes it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import OutOfMemoryError

from deepresearch.config import AgentTemplate, Settings
from deepresearch.events import Completed, Event, RoundStart, utc_now
from deepresearch.runtime import manager as manager_module
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.manager import SessionManager, SessionRequest
from deepresearch.runtime.metrics import Metrics
from deepresearch.sessions import redis as redis_store
from deepresearch.sessions import sqlite as sqlite_store
from deepresearch.sessions.records import SessionChanges, SessionRecord, StoredEvent
from deepresearch.sessions.redis import RedisSessionStore
from deepresearch.sessions.sqlite import SqliteSessionStore
from tests.support import TERMINAL

Store = SqliteSessionStore | RedisSessionStore


def sqlite_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")


def redis_full() -> None:
    raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")


@dataclass
class Faulty:
    """A store, the fault its hook raises, and how to really fill it and make room."""

    store: Store
    error: type[Exception]
    prune_batch: int

    def full(self) -> None:
        (sqlite_full if isinstance(self.store, SqliteSessionStore) else redis_full)()

    async def fill_up(self) -> None:
        """Leave the store no room for more than it holds now."""
        store = self.store
        if isinstance(store, SqliteSessionStore):
            pages = await store._write(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
            await store._write(lambda db: db.execute(f"PRAGMA max_page_count = {pages + 2}"))
        else:
            used = (await store.client.info("memory"))["used_memory"]
            await store.client.config_set("maxmemory-policy", "noeviction")
            await store.client.config_set("maxmemory", str(int(used) + 300_000))

    async def make_room(self) -> None:
        store = self.store
        if isinstance(store, SqliteSessionStore):
            await store._write(lambda db: db.execute("PRAGMA max_page_count = 1000000"))
        else:
            await store.client.config_set("maxmemory", "0")

    async def usable(self) -> bool:
        """Nothing of a failed write holds the store (SQLite: no open transaction)."""
        store = self.store
        if isinstance(store, SqliteSessionStore):
            return not await store._write(lambda db: db.in_transaction)
        return bool(await store.client.ping())


@pytest.fixture(params=["sqlite", "redis"])
async def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Faulty]:
    found: Faulty
    if request.param == "sqlite":
        found = Faulty(
            SqliteSessionStore(tmp_path / "s.sqlite"),
            sqlite3.OperationalError,
            sqlite_store.PRUNE_BATCH,
        )
    else:
        url: str = request.getfixturevalue("redis_url")
        found = Faulty(RedisSessionStore(url), OutOfMemoryError, redis_store.PRUNE_BATCH)
    await found.store.open()
    try:
        yield found
    finally:
        if isinstance(found.store, RedisSessionStore):
            await found.store.client.config_set("maxmemory", "0")  # the server is shared
        await found.store.close()


def record(n: int, status: str = "completed", days_old: float = 0) -> SessionRecord:
    return SessionRecord(
        id=f"session-{n:05d}",
        question="q",
        status=status,  # type: ignore[arg-type]
        created_at=utc_now() - timedelta(days=days_old),
    )


async def test_a_failed_write_leaves_nothing_and_later_writes_succeed(faulty: Faulty) -> None:
    store = faulty.store
    await store.create(record(1, "processing"))
    store.fault = faulty.full
    with pytest.raises(faulty.error):
        await store.append("session-00001", [StoredEvent(1, "init", "{}")])
    with pytest.raises(faulty.error):
        await store.create(record(2, "queued"))
    store.fault = None
    # Nothing of the failed writes is there, and the store takes writes again.
    assert await store.events("session-00001") == []
    assert await store.get("session-00002") is None
    assert await faulty.usable()
    await store.append(
        "session-00001",
        [StoredEvent(1, "completed", "{}")],
        SessionChanges(status="completed", ended_at=utc_now()),
    )
    stored = await store.get("session-00001")
    assert stored is not None and stored.status == "completed" and stored.last_seq == 1


async def test_a_really_full_store_fails_writes_then_recovers(faulty: Faulty) -> None:
    """No hook: SQLite's own SQLITE_FULL (a page limit standing in for a small disk),
    Redis's own OOM refusal (maxmemory with no eviction)."""
    store = faulty.store
    await store.create(record(1, "processing"))
    await faulty.fill_up()
    big = "x" * 100_000
    failed = None
    for seq in range(1, 20):
        try:
            await store.append("session-00001", [StoredEvent(seq, "thinking", big)])
        except faulty.error as exc:
            failed = (seq, exc)
            break
    assert failed is not None and ("full" in str(failed[1]) or "maxmemory" in str(failed[1]))
    assert await faulty.usable()
    stored = await store.get("session-00001")
    assert stored is not None and stored.last_seq == failed[0] - 1  # nothing half-written
    await faulty.make_room()
    seq = failed[0]
    await store.append("session-00001", [StoredEvent(seq, "thinking", big)])
    assert [e.seq for e in await store.events("session-00001")] == list(range(1, seq + 1))


async def test_retention_prunes_in_batches_and_reads_page(faulty: Faulty) -> None:
    store = faulty.store
    total = faulty.prune_batch * 2 + 7
    for n in range(total):
        await store.create(record(n, days_old=40))
    await store.create(record(99_999, "processing", days_old=40))
    before = await scripts_run(store)
    removed = await store.prune(older_than=utc_now() - timedelta(days=30), keep=10_000)
    assert removed == total
    if isinstance(store, RedisSessionStore):  # one small script per batch, not one for all
        assert await scripts_run(store) - before >= 3
    _, left = await store.list_sessions(limit=10)
    assert left == 1  # the unfinished one stays
    events = [StoredEvent(seq, "thinking", "{}") for seq in range(1, 26)]
    await store.append("session-99999", events)
    page = await store.events("session-99999", 10, limit=5)
    assert [e.seq for e in page] == [11, 12, 13, 14, 15]


async def scripts_run(store: Store) -> int:
    """How many Lua scripts the Redis server has run (its own command statistics)."""
    if not isinstance(store, RedisSessionStore):
        return 0
    stats: dict[str, Any] = await store.client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def manager_for(store: Store, folder: Path, agent: Any = None) -> SessionManager:
    admission = Admission(4, 8)
    settings = Settings(data_dir=folder, corpus=[], search=["local"], disconnect_grace=0.0)
    return SessionManager(settings, store, admission, Metrics(admission, list), agent)


async def test_a_restart_on_a_full_store_starts_and_settles_later(
    faulty: Faulty, tmp_path: Path
) -> None:
    store = faulty.store
    await store.create(record(1, "processing"))
    store.fault = faulty.full
    manager = manager_for(store, tmp_path)
    try:
        await manager.open()  # does not raise
        seen = await manager.get("session-00001", None)
        assert seen.status == "failed" and "interrupted" in (seen.error or "")
        stored = await store.get("session-00001")
        assert stored is not None and stored.status == "processing"  # not yet written
        store.fault = None
        await manager.settle()
        stored = await store.get("session-00001")
        assert stored is not None and stored.status == "failed" and stored.last_seq == 1
    finally:
        await manager.close()


class SteppedAgent:
    """Yields a round each time the test lets it, then completes."""

    def __init__(self, session_id: str, steps: asyncio.Queue[bool]) -> None:
        self.session_id = session_id
        self.steps = steps

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        number = 0
        while await self.steps.get():
            number += 1
            yield RoundStart(session_id=self.session_id, round=number)
        yield Completed(session_id=self.session_id, content="done")


async def test_writes_failing_mid_run_end_each_stream_once_and_the_store_recovers(
    faulty: Faulty, tmp_path: Path
) -> None:
    store = faulty.store
    steps: dict[str, asyncio.Queue[bool]] = {}

    def agent(session_id: str, config: AgentTemplate) -> SteppedAgent:
        return SteppedAgent(session_id, steps.setdefault(session_id, asyncio.Queue()))

    manager = manager_for(store, tmp_path, agent)
    await manager.open()
    try:
        ids = [f"running-{n:03d}" for n in range(3)]
        seen: dict[str, list[str]] = {sid: [] for sid in ids}
        started = {sid: asyncio.Event() for sid in ids}

        async def follow(sid: str) -> None:
            async for stored in manager.follow(sid):
                if stored is not None:
                    seen[sid].append(stored.type)
                    if stored.type == "round_start":
                        started[sid].set()

        for sid in ids:
            await manager.start(SessionRequest("q", session_id=sid, on_disconnect="continue"))
        followers = [asyncio.create_task(follow(sid)) for sid in ids]
        for sid in ids:
            steps.setdefault(sid, asyncio.Queue()).put_nowait(True)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 30)

        store.fault = faulty.full  # the store is full: the next round cannot be saved
        for sid in ids:
            steps[sid].put_nowait(True)
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        for sid in ids:
            terminals = [kind for kind in seen[sid] if kind in TERMINAL]
            assert terminals == ["error"] and seen[sid][-1] == "error", seen[sid]
            found = await manager.get(sid, None)
            assert found.status == "failed" and "store" in (found.error or "")
        assert manager.unsettled_count == len(ids)

        store.fault = None  # room again: the outcomes are stored, a new session runs
        await manager.settle()
        for sid in ids:
            stored = await store.get(sid)
            assert stored is not None and stored.status == "failed"
            kinds = [event.type for event in await store.events(sid)]
            assert [kind for kind in kinds if kind in TERMINAL] == ["error"]
        await manager.start(SessionRequest("q", session_id="after-full", on_disconnect="continue"))
        steps.setdefault("after-full", asyncio.Queue()).put_nowait(False)
        ended = [stored.type async for stored in manager.follow("after-full") if stored]
        assert ended[-1] == "completed"
        assert (await store.get("after-full")).status == "completed"  # type: ignore[union-attr]
    finally:
        await manager.close()


async def test_a_follower_catches_up_on_a_long_session_a_page_at_a_time(
    faulty: Faulty, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = faulty.store
    await store.create(record(1, "processing"))
    count = manager_module.READ_PAGE * 2 + 345
    rows = [StoredEvent(seq, "round_start", f'{{"seq":{seq}}}') for seq in range(1, count + 1)]
    for start in range(0, count, 500):
        await store.append("session-00001", rows[start : start + 500])
    await store.append(
        "session-00001",
        [StoredEvent(count + 1, "completed", "{}")],
        SessionChanges(status="completed", ended_at=utc_now()),
    )
    asked: list[int | None] = []
    read = store.events

    async def events(session_id: str, after: int = 0, limit: int | None = None) -> Any:
        asked.append(limit)
        return await read(session_id, after, limit)

    monkeypatch.setattr(store, "events", events)
    manager = manager_for(store, tmp_path)
    await manager.open()
    try:
        seqs = [row.seq async for row in manager.follow("session-00001", after=7) if row]
    finally:
        await manager.close()
    assert seqs == list(range(8, count + 2))
    assert len(asked) >= 3 and all(
        limit is not None and limit <= manager_module.READ_PAGE for limit in asked
    )
