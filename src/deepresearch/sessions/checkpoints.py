"""Agent checkpoints: what a session needs to resume from its last completed round.

A checkpoint is the agent's conversation (the chat messages sent to the model) and
its counters (rounds, tool calls, ...), plus the round it was taken after and the
event log's last sequence number at that moment, so a resumed run knows where its
events go on. One checkpoint per session, replaced each round; JSON throughout.

``SqliteCheckpointStore`` keeps them in a ``checkpoints`` table (the sessions file
by default; its own connection and thread). ``RedisCheckpointStore`` (in
``redis_checkpoints.py``) keeps them beside the session's record, fenced by its lease.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Checkpoint:
    session_id: str
    round: int  # the last completed round (0: none yet)
    last_seq: int  # the event log's last sequence number when it was taken
    messages: list[dict[str, Any]]  # the model's conversation, as sent
    counters: dict[str, int] = field(default_factory=dict)  # tool calls, tokens, ...
    # The rest of the agent's state a resumed run needs (numbered sources, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    saved_at: datetime | None = None  # set by the store

    def to_json(self) -> str:
        return json.dumps(
            {
                "round": self.round,
                "last_seq": self.last_seq,
                "messages": self.messages,
                "counters": self.counters,
                "extra": self.extra,
                "saved_at": (self.saved_at or datetime.now(UTC)).isoformat(),
            }
        )

    @classmethod
    def from_json(cls, session_id: str, text: str) -> Checkpoint:
        data = json.loads(text)
        return cls(
            session_id=session_id,
            round=data["round"],
            last_seq=data["last_seq"],
            messages=data["messages"],
            counters=data["counters"],
            extra=data.get("extra", {}),
            saved_at=datetime.fromisoformat(data["saved_at"]),
        )


class CheckpointStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def save(self, checkpoint: Checkpoint, *, lease: str | None = None) -> None:
        """Replace the session's checkpoint. With ``lease`` (a token), ``LeaseLost``
        unless that token holds the session's lease (the single-process store has
        one writer and needs no fence)."""

    async def load(self, session_id: str) -> Checkpoint | None:
        """The session's latest checkpoint, or None."""

    async def delete(self, session_id: str) -> None:
        """Forget it (the session has ended)."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    session_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
) WITHOUT ROWID;
"""


class SqliteCheckpointStore:
    """Checkpoints in a SQLite file (WAL), on a thread of their own."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoints")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.executescript(SCHEMA)
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        assert db is not None, "checkpoint store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, db)

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._thread, self._connect)

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)

    async def save(self, checkpoint: Checkpoint, *, lease: str | None = None) -> None:
        data = checkpoint.to_json()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO checkpoints (session_id, data) VALUES (?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET data = excluded.data",
                (checkpoint.session_id, data),
            )

        await self._run(write)

    async def load(self, session_id: str) -> Checkpoint | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT data FROM checkpoints WHERE session_id = ?", (session_id,)
            ).fetchone()
            return row[0] if row else None

        data = await self._run(read)
        return Checkpoint.from_json(session_id, data) if data is not None else None

    async def delete(self, session_id: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM checkpoints WHERE session_id = ?", (session_id,))
        )
