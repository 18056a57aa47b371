"""Retention on its own, over the real SQLite store: old finished sessions go, the
unfinished and the recent stay; it prunes again on its own schedule until stopped."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from deepresearch.events import utc_now
from deepresearch.runtime.retention import Retention
from deepresearch.sessions.records import SessionRecord
from deepresearch.sessions.sqlite import SqliteSessionStore


def record(n: int, status: str, days_ago: float) -> SessionRecord:
    return SessionRecord(
        id=f"r-{n}",
        question="q",
        status=status,  # type: ignore[arg-type]
        created_at=utc_now() - timedelta(days=days_ago),
    )


async def test_it_prunes_old_finished_sessions_now_and_then_until_stopped(tmp_path: Path) -> None:
    store = SqliteSessionStore(tmp_path / "sessions.sqlite")
    await store.open()
    try:
        await store.create(record(1, "completed", 40))
        await store.create(record(2, "processing", 40))
        await store.create(record(3, "completed", 1))
        retention = Retention(store, days=30, keep=100, every=0.01)
        assert await retention.prune() == 1
        assert await store.get("r-1") is None
        assert await store.get("r-2") is not None and await store.get("r-3") is not None

        pruned = asyncio.Event()
        prune = retention.prune

        async def watched() -> int:
            removed = await prune()
            if removed:
                pruned.set()
            return removed

        retention.prune = watched  # type: ignore[method-assign]
        retention.start()
        await store.create(record(4, "failed", 50))
        await asyncio.wait_for(pruned.wait(), 10)
        await retention.stop()
        assert await store.get("r-4") is None
    finally:
        await store.close()


async def test_a_failing_store_is_logged_not_raised(tmp_path: Path) -> None:
    class Broken:
        async def prune(self, **_: object) -> int:
            raise OSError("disk gone")

    assert await Retention(Broken(), days=1, keep=1).prune() == 0  # type: ignore[arg-type]
