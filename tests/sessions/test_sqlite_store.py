"""The SQLite store passes the store conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepresearch.sessions import SessionStore, SqliteSessionStore
from tests.sessions.conformance import Reopen, StoreConformance


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
