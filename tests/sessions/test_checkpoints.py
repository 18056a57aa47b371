"""Agent checkpoints in both backends: the latest one per session, kept across a
restart, gone when deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from deepresearch.errors import SessionNotFound
from deepresearch.sessions.checkpoints import Checkpoint, CheckpointStore, SqliteCheckpointStore
from deepresearch.sessions.redis import RedisSessionStore
from tests.sessions.conformance import record

Reopen = Callable[[], Awaitable[CheckpointStore]]

MESSAGES = [
    {"role": "system", "content": "You are a researcher."},
    {"role": "user", "content": "Does aspirin prevent stroke? ünïcödé"},
    {"role": "assistant", "content": '<tool_call>{"name": "search"}</tool_call>'},
    {"role": "user", "content": "<tool_response>[1] ...</tool_response>"},
]


class CheckpointConformance:
    async def test_save_and_load_round_trip(self, checkpoints: CheckpointStore) -> None:
        saved = Checkpoint("s-1", round=2, last_seq=17, messages=MESSAGES, counters={"calls": 3})
        await checkpoints.save(saved)
        loaded = await checkpoints.load("s-1")
        assert loaded is not None and loaded.saved_at is not None
        assert (loaded.session_id, loaded.round, loaded.last_seq) == ("s-1", 2, 17)
        assert (loaded.messages, loaded.counters) == (MESSAGES, {"calls": 3})
        assert await checkpoints.load("s-2") is None

    async def test_the_latest_replaces_the_last(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(Checkpoint("s-1", 1, 5, MESSAGES[:2]))
        await checkpoints.save(Checkpoint("s-1", 2, 9, MESSAGES))
        loaded = await checkpoints.load("s-1")
        assert loaded is not None and (loaded.round, loaded.messages) == (2, MESSAGES)

    async def test_delete_forgets_it(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(Checkpoint("s-1", 1, 5, MESSAGES))
        await checkpoints.delete("s-1")
        assert await checkpoints.load("s-1") is None
        await checkpoints.delete("s-1")  # deleting nothing is fine

    async def test_it_survives_a_restart(
        self, checkpoints: CheckpointStore, reopen_checkpoints: Reopen
    ) -> None:
        await checkpoints.save(Checkpoint("s-1", 3, 30, MESSAGES, {"calls": 7}))
        again = await reopen_checkpoints()
        loaded = await again.load("s-1")
        assert loaded is not None and (loaded.round, loaded.counters) == (3, {"calls": 7})


class TestSqliteCheckpoints(CheckpointConformance):
    @pytest.fixture
    async def opened(self) -> AsyncIterator[list[SqliteCheckpointStore]]:
        stores: list[SqliteCheckpointStore] = []
        yield stores
        for store in stores:
            await store.close()

    @pytest.fixture
    async def checkpoints(
        self, tmp_path: Path, opened: list[SqliteCheckpointStore]
    ) -> CheckpointStore:
        store = SqliteCheckpointStore(tmp_path / "sessions.sqlite")
        await store.open()
        opened.append(store)
        return store

    @pytest.fixture
    def reopen_checkpoints(self, tmp_path: Path, opened: list[SqliteCheckpointStore]) -> Reopen:
        async def again() -> CheckpointStore:
            for store in opened:
                await store.close()
            opened.clear()
            fresh = SqliteCheckpointStore(tmp_path / "sessions.sqlite")
            await fresh.open()
            opened.append(fresh)
            return fresh

        return again


class TestRedisCheckpoints(CheckpointConformance):
    @pytest.fixture
    async def opened(self) -> AsyncIterator[list[RedisSessionStore]]:
        stores: list[RedisSessionStore] = []
        yield stores
        for store in stores:
            await store.close()

    @pytest.fixture
    async def checkpoints(self, redis_url: str, opened: list[RedisSessionStore]) -> CheckpointStore:
        store = RedisSessionStore(redis_url)
        await store.open()
        opened.append(store)
        for session_id in ("s-1", "s-2"):  # a checkpoint belongs to a session
            await store.create(record(session_id))
        return store.checkpoints()

    @pytest.fixture
    def reopen_checkpoints(self, redis_url: str, opened: list[RedisSessionStore]) -> Reopen:
        async def again() -> CheckpointStore:
            fresh = RedisSessionStore(redis_url)
            await fresh.open()
            opened.append(fresh)
            return fresh.checkpoints()

        return again

    async def test_a_session_that_is_gone_takes_no_checkpoint(
        self, checkpoints: CheckpointStore
    ) -> None:
        with pytest.raises(SessionNotFound):
            await checkpoints.save(Checkpoint("pruned", 1, 1, MESSAGES))
