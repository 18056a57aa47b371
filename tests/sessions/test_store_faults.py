"""The SQLite store under faults: a failed COMMIT rolls back, a full database recovers,
retention works in batches, reads page."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from deepresearch.events import utc_now
from deepresearch.sessions.records import SessionChanges, SessionRecord, StoredEvent
from deepresearch.sessions.sqlite import PRUNE_BATCH, SqliteSessionStore


def disk_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")


def record(n: int, status: str = "completed", days_old: float = 0) -> SessionRecord:
    return SessionRecord(
        id=f"session-{n:05d}",
        question="q",
        status=status,  # type: ignore[arg-type]
        created_at=utc_now() - timedelta(days=days_old),
    )


async def test_a_failed_commit_rolls_back_and_later_writes_succeed(tmp_path: Path) -> None:
    store = SqliteSessionStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        await store.create(record(1, "processing"))
        store.fault = disk_full
        with pytest.raises(sqlite3.OperationalError):
            await store.append("session-00001", [StoredEvent(1, "init", "{}")])
        store.fault = None
        # Nothing of the failed write is there, and the connection is usable again.
        assert await store.events("session-00001") == []
        await store.append(
            "session-00001",
            [StoredEvent(1, "completed", "{}")],
            SessionChanges(status="completed", ended_at=utc_now()),
        )
        stored = await store.get("session-00001")
        assert stored is not None and stored.status == "completed" and stored.last_seq == 1
    finally:
        await store.close()


async def test_a_really_full_database_fails_writes_then_recovers(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL (a page limit standing in for a small disk)."""
    store = SqliteSessionStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        await store.create(record(1, "processing"))
        pages = await store._write(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
        await store._write(lambda db: db.execute(f"PRAGMA max_page_count = {pages + 2}"))
        big = "x" * 100_000
        failed = None
        for seq in range(1, 20):
            try:
                await store.append("session-00001", [StoredEvent(seq, "thinking", big)])
            except sqlite3.Error as exc:
                failed = (seq, exc)
                break
        assert failed is not None and "full" in str(failed[1])
        in_transaction = await store._write(lambda db: db.in_transaction)
        assert in_transaction is False
        await store._write(lambda db: db.execute("PRAGMA max_page_count = 1000000"))
        seq = failed[0]
        await store.append("session-00001", [StoredEvent(seq, "thinking", big)])
        assert [e.seq for e in await store.events("session-00001")] == list(range(1, seq + 1))
    finally:
        await store.close()


async def test_retention_prunes_in_batches_and_reads_page(tmp_path: Path) -> None:
    store = SqliteSessionStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        total = PRUNE_BATCH * 2 + 7
        for n in range(total):
            await store.create(record(n, days_old=40))
        await store.create(record(99_999, "processing", days_old=40))
        removed = await store.prune(older_than=utc_now() - timedelta(days=30), keep=10_000)
        assert removed == total
        _, left = await store.list_sessions(limit=10)
        assert left == 1  # the unfinished one stays
        events = [StoredEvent(seq, "thinking", "{}") for seq in range(1, 26)]
        await store.append("session-99999", events)
        page = await store.events("session-99999", 10, limit=5)
        assert [e.seq for e in page] == [11, 12, 13, 14, 15]
    finally:
        await store.close()


async def test_a_restart_on_a_full_disk_starts_and_settles_later(tmp_path: Path) -> None:
    from deepresearch.config import Settings
    from deepresearch.runtime.admission import Admission
    from deepresearch.runtime.manager import SessionManager
    from deepresearch.runtime.metrics import Metrics

    store = SqliteSessionStore(tmp_path / "s.sqlite")
    await store.open()
    await store.create(record(1, "processing"))
    store.fault = disk_full
    admission = Admission(1, 1)
    settings = Settings(data_dir=tmp_path, corpus=[], search=["local"])
    manager = SessionManager(settings, store, admission, Metrics(admission, list), None)  # type: ignore[arg-type]
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
        await store.close()
