"""The SQLite store passes the store and event-log conformance suites."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepresearch.sessions import SessionStore, SqliteSessionStore
from tests.sessions.conformance import Reopen, StoreConformance
from tests.sessions.eventlog_conformance import EventLogConformance, TailWaiting


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[SqliteSessionStore]]:
    opened: list[SqliteSessionStore] = []
    yield opened
    for store in opened:
        await store.close()


@pytest.fixture
async def store(tmp_path: Path, stores: list[SqliteSessionStore]) -> SessionStore:
    first = SqliteSessionStore(tmp_path / "sessions.sqlite")
    await first.open()
    stores.append(first)
    return first


@pytest.fixture
def reopen(tmp_path: Path, stores: list[SqliteSessionStore]) -> Reopen:
    async def again() -> SessionStore:
        for store in stores:
            await store.close()
        stores.clear()
        fresh = SqliteSessionStore(tmp_path / "sessions.sqlite")
        await fresh.open()
        stores.append(fresh)
        return fresh

    return again


@pytest.fixture
def log(store: SqliteSessionStore) -> SqliteSessionStore:
    return store


@pytest.fixture
def writer(store: SqliteSessionStore) -> SqliteSessionStore:
    """One process writes and reads: the writer is the store itself."""
    return store


@pytest.fixture
def tail_waiting(store: SqliteSessionStore) -> TailWaiting:
    async def waiting() -> None:
        while True:
            if store._appended.waiting > 0:
                return
            await asyncio.sleep(0.001)

    return waiting


class TestSqliteEventLog(EventLogConformance):
    pass


class TestSqliteStore(StoreConformance):
    async def test_file_is_in_wal_mode(self, store: SessionStore, tmp_path: Path) -> None:
        import sqlite3

        db = sqlite3.connect(tmp_path / "sessions.sqlite")
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()


async def test_a_second_process_cannot_open_the_same_store(
    store: SessionStore, tmp_path: Path
) -> None:
    from deepresearch.errors import ConfigurationError

    second = SqliteSessionStore(tmp_path / "sessions.sqlite")
    with pytest.raises(ConfigurationError, match="DEEPRESEARCH_DATA_DIR"):
        await second.open()
    await store.close()
    await second.open()  # free again once the first has closed
    await second.close()


async def test_a_file_from_before_conversations_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "sessions.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, question TEXT NOT NULL, "
        "status TEXT NOT NULL, created_at TEXT NOT NULL, owner TEXT, on_disconnect TEXT "
        "NOT NULL, started_at TEXT, ended_at TEXT, answer TEXT, citations TEXT NOT NULL "
        "DEFAULT '[]', error TEXT);"
        "INSERT INTO sessions (id, question, status, created_at, on_disconnect) VALUES "
        "('old-1', 'q', 'completed', '2026-01-01T00:00:00+00:00', 'grace');"
    )
    db.commit()
    db.close()
    store = SqliteSessionStore(path)
    await store.open()
    try:
        [turn] = await store.conversation("old-1")
        assert (turn.id, turn.conversation, turn.turn) == ("old-1", "old-1", 1)
        assert turn.generation == {}  # the column added, empty: the server's defaults
        listed, total = await store.list_conversations(limit=5)
        assert total == 1 and listed[0].title == "q"
    finally:
        await store.close()
