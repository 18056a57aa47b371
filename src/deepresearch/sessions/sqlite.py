"""The default session store: one SQLite file in WAL mode.

All writes go through one thread and one connection, and appends from every
session are group-committed: while one transaction is being written, the next
appends queue up and go in the following one. So 1,000 streams cost a few
commits, not 1,000. Reads use a second connection on its own thread (WAL lets
readers run beside the writer). The event loop never touches SQLite.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from deepresearch.errors import ConfigurationError, SessionConflict
from deepresearch.sessions.eventlog import AppendSignal, tail_by_signal
from deepresearch.sessions.records import (
    UNFINISHED,
    ConversationSummary,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    question TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    owner TEXT,
    on_disconnect TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    answer TEXT,
    citations TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    conversation_id TEXT,
    turn INTEGER NOT NULL DEFAULT 1,
    client TEXT,
    generation TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions (created_at DESC);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, created_at DESC);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""
# Files from before conversations get the new columns; every session then names its
# conversation (its own id when it started one), so grouping needs no COALESCE.
MIGRATIONS = {
    "conversation_id": "ALTER TABLE sessions ADD COLUMN conversation_id TEXT",
    "turn": "ALTER TABLE sessions ADD COLUMN turn INTEGER NOT NULL DEFAULT 1",
    "client": "ALTER TABLE sessions ADD COLUMN client TEXT",
    "generation": "ALTER TABLE sessions ADD COLUMN generation TEXT NOT NULL DEFAULT '{}'",
}
AFTER_MIGRATIONS = """
UPDATE sessions SET conversation_id = id WHERE conversation_id IS NULL;
CREATE INDEX IF NOT EXISTS sessions_by_conversation ON sessions (conversation_id, turn);
"""

COLUMNS = (
    "id, question, status, created_at, owner, on_disconnect, "
    "started_at, ended_at, answer, citations, error, conversation_id, turn, client, generation"
)
# The last sequence number is read from the events' primary key rather than kept
# in the row: updating the row on every event doubled the writer's work.
SELECT_COLUMNS = (
    f"{COLUMNS}, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = sessions.id)"
)
FINISHED_SQL = "status NOT IN ('queued', 'processing')"
# Retention deletes this many sessions per transaction, so appends wait behind one
# small transaction at a time, never behind the whole clean-up.
PRUNE_BATCH = 200
# The WAL is cut back to this size after each checkpoint (it grows unbounded otherwise
# while a long read holds back a checkpoint, and a full disk needs the space back).
WAL_LIMIT_BYTES = 4 * 2**20

# A fault injected by tests, run inside each write transaction just before COMMIT
# (``SqliteSessionStore.fault``): it raises to make the write fail as a full disk would.
Fault = Callable[[], None]


@dataclass
class _Write:
    """One caller's part of a group commit."""

    session_id: str
    events: Sequence[StoredEvent]
    changes: SessionChanges | None
    future: asyncio.Future[None]
    record: SessionRecord | None = None  # a new session to insert first
    conflict: bool = False  # the record's id was taken


Batch = list[_Write]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _record(row: tuple[Any, ...]) -> SessionRecord:
    created = _parse_time(row[3])
    assert created is not None
    return SessionRecord(
        conversation_id=row[11] if row[11] != row[0] else None,
        turn=row[12],
        client=row[13],
        generation=json.loads(row[14]),
        id=row[0],
        question=row[1],
        status=cast(SessionStatus, row[2]),
        created_at=created,
        owner=row[4],
        on_disconnect=row[5],
        started_at=_parse_time(row[6]),
        ended_at=_parse_time(row[7]),
        answer=row[8],
        citations=json.loads(row[9]),
        error=row[10],
        last_seq=row[15],
    )


def _row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.question,
        record.status,
        _time(record.created_at),
        record.owner,
        record.on_disconnect,
        _time(record.started_at),
        _time(record.ended_at),
        record.answer,
        json.dumps(record.citations),
        record.error,
        record.conversation,
        record.turn,
        record.client,
        json.dumps(record.generation),
    )


def _rollback(db: sqlite3.Connection) -> None:
    """Leave no transaction open, whatever failed: every later write would fail in it."""
    if db.in_transaction:
        with suppress(sqlite3.Error):  # SQLite may have rolled back itself (SQLITE_FULL)
            db.execute("ROLLBACK")


@contextmanager
def _transaction(db: sqlite3.Connection, fault: Fault | None = None) -> Iterator[None]:
    """One explicit transaction (the connection is in autocommit mode otherwise);
    rolled back when anything in it fails, the ``COMMIT`` included."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        if fault is not None:
            fault()
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _write_one(db: sqlite3.Connection, write: _Write) -> None:
    if write.record is not None:
        inserted = db.execute(
            f"INSERT OR IGNORE INTO sessions ({COLUMNS}) VALUES ({', '.join('?' * 15)})",
            _row(write.record),
        )
        write.conflict = inserted.rowcount == 0
    if write.events:
        db.executemany(
            "INSERT INTO events (session_id, seq, type, data) VALUES (?, ?, ?, ?)",
            [(write.session_id, e.seq, e.type, e.data) for e in write.events],
        )
    if write.changes is not None:
        _apply_changes(db, write.session_id, write.changes)


def _write_batch(
    db: sqlite3.Connection, *, batch: Batch, fault: Fault | None = None
) -> list[Exception | None]:
    """All writes in one transaction; if that fails, each in its own, so one
    caller's bad write fails that caller alone. Returns each write's failure."""
    try:
        with _transaction(db, fault):
            for write in batch:
                _write_one(db, write)
        return [None] * len(batch)
    except sqlite3.Error:
        pass
    failures: list[Exception | None] = []
    for write in batch:
        try:
            with _transaction(db, fault):
                _write_one(db, write)
            failures.append(None)
        except sqlite3.Error as exc:
            failures.append(exc)
    if any(failures):
        _give_back_space(db)
    return failures


def _give_back_space(db: sqlite3.Connection) -> None:
    """After a failed write (a full disk, most likely): checkpoint and cut the WAL
    back, so space the database no longer needs goes back to the filesystem."""
    with suppress(sqlite3.Error):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _change_columns(changes: SessionChanges) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": changes.status,
        "started_at": _time(changes.started_at),
        "ended_at": _time(changes.ended_at),
        "answer": changes.answer,
        "citations": json.dumps(changes.citations) if changes.citations is not None else None,
        "error": changes.error,
    }
    return {column: value for column, value in values.items() if value is not None}


def _apply_changes(db: sqlite3.Connection, session_id: str, changes: SessionChanges) -> None:
    columns = _change_columns(changes)
    if columns:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        db.execute(
            f"UPDATE sessions SET {assignments} WHERE id = ?", [*columns.values(), session_id]
        )


def _migrate(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    present = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    for column, statement in MIGRATIONS.items():
        if column not in present:
            db.execute(statement)
    db.executescript(AFTER_MIGRATIONS)


def _doomed_conversations(db: sqlite3.Connection, cutoff: str, keep: int) -> list[tuple[str, int]]:
    """The conversations retention deletes, newest first, each with how many
    sessions it holds."""
    rows = db.execute(
        "SELECT conversation_id, MAX(created_at), "
        f"SUM(CASE WHEN {FINISHED_SQL} THEN 0 ELSE 1 END), COUNT(*) "
        "FROM sessions GROUP BY conversation_id ORDER BY MAX(created_at) DESC"
    )
    doomed: list[tuple[str, int]] = []
    kept = 0
    full = False
    for conversation_id, latest, unfinished, count in rows:
        if unfinished:
            continue
        full = full or kept + count > keep
        if full or latest < cutoff:
            doomed.append((conversation_id, count))
        else:
            kept += count
    return doomed


class SqliteSessionStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sessions-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sessions-read")
        self._write_db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None
        self._pending: Batch = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock: IO[str] | None = None
        self.fault: Fault | None = None  # tests: make writes fail as a full disk would
        self._appended = AppendSignal()  # wakes `tail` readers after each commit

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode loses at most the last commits on power loss, never consistency.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        return db

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._write_db
        assert db is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, db)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._read_db
        assert db is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, db)

    def _take_lock(self) -> None:
        """One process per store: a second one would take the first one's live
        sessions for interrupted ones (and resume them). The OS drops the lock when a
        process dies."""
        lock = self._path.with_suffix(".lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise ConfigurationError(
                f"another deepresearch process is using {self._path.parent} "
                "(DEEPRESEARCH_DATA_DIR): stop it, or give this one its own data dir"
            ) from exc
        self._lock = lock

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._take_lock)
        self._write_db = await loop.run_in_executor(self._writer, self._connect)
        await self._write(_migrate)
        self._read_db = await loop.run_in_executor(self._reader, self._connect)

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        loop = asyncio.get_running_loop()
        for db, pool in ((self._write_db, self._writer), (self._read_db, self._reader)):
            if db is not None:
                await loop.run_in_executor(pool, db.close)
        self._write_db = self._read_db = None
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    # -- writes -----------------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        # Creates join the group commit too: a burst of new sessions costs a few
        # transactions, and their first events are not stuck behind one each.
        write = await self._submit(_Write(record.id, (), None, self._future(), record))
        if write.conflict:
            raise SessionConflict(f"session {record.id} already exists")

    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
        *,
        lease: str | None = None,  # one process writes this store: nothing to fence
    ) -> None:
        await self._submit(_Write(session_id, events, changes, self._future()))

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, write: _Write) -> _Write:
        self._pending.append(write)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: a cancelled caller must not leave its write half-known.
        await asyncio.shield(write.future)
        return write

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    failures = await self._write(
                        functools.partial(_write_batch, batch=batch, fault=self.fault)
                    )
                except Exception as exc:  # the writer thread itself failed
                    failures = [exc] * len(batch)
                for write, failure in zip(batch, failures, strict=True):
                    if write.future.done():
                        continue
                    if failure is None:
                        write.future.set_result(None)
                        if write.events:
                            self._appended.notify(write.session_id)
                    else:
                        write.future.set_exception(failure)
        finally:
            self._flusher = None

    async def update(self, session_id: str, changes: SessionChanges) -> None:
        await self.append(session_id, (), changes)

    async def prune(self, *, older_than: datetime, keep: int) -> int:
        """Delete old finished sessions, ``PRUNE_BATCH`` per transaction: between
        batches the writer takes the waiting appends, so live sessions never wait
        behind the whole clean-up."""
        cutoff = older_than.isoformat()

        def delete_some(db: sqlite3.Connection) -> tuple[int, bool]:
            """Whole conversations, oldest first, up to ``PRUNE_BATCH`` sessions (at
            least one conversation); and whether doomed ones are left. Chosen afresh
            in each transaction: a follow-up asked meanwhile keeps its conversation."""
            with _transaction(db, self.fault):
                doomed = _doomed_conversations(db, cutoff, keep)
                batch: list[str] = []
                sessions = 0
                while doomed and (not batch or sessions + doomed[-1][1] <= PRUNE_BATCH):
                    conversation_id, count = doomed.pop()
                    batch.append(conversation_id)
                    sessions += count
                if batch:
                    marks = ", ".join("?" * len(batch))
                    db.execute(
                        "DELETE FROM events WHERE session_id IN "
                        f"(SELECT id FROM sessions WHERE conversation_id IN ({marks}))",
                        batch,
                    )
                    db.execute(f"DELETE FROM sessions WHERE conversation_id IN ({marks})", batch)
                return sessions, bool(doomed)

        removed = 0
        while True:
            count, more = await self._write(delete_some)
            removed += count
            if not more:
                return removed
            await asyncio.sleep(0)  # let the flusher's next batch in

    # -- reads ------------------------------------------------------------------------------

    async def get(self, session_id: str) -> SessionRecord | None:
        def fetch(db: sqlite3.Connection) -> SessionRecord | None:
            row = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            return _record(row) if row else None

        return await self._read(fetch)

    async def list_sessions(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: SessionStatus | None = None,
        owner: str | None = None,
    ) -> tuple[list[SessionRecord], int]:
        clauses: list[str] = []
        params: list[str] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def fetch(db: sqlite3.Connection) -> tuple[list[SessionRecord], int]:
            rows = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM sessions {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM sessions {where}", params).fetchone()[0]
            return [_record(row) for row in rows], total

        return await self._read(fetch)

    async def conversation(self, conversation_id: str) -> list[SessionRecord]:
        def fetch(db: sqlite3.Connection) -> list[SessionRecord]:
            rows = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM sessions WHERE conversation_id = ? ORDER BY turn",
                (conversation_id,),
            )
            return [_record(row) for row in rows]

        return await self._read(fetch)

    async def list_conversations(
        self, *, limit: int, offset: int = 0, owner: str | None = None
    ) -> tuple[list[ConversationSummary], int]:
        where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
        turn_of = (
            "SELECT {} FROM sessions t WHERE t.conversation_id = c.id ORDER BY turn {} LIMIT 1"
        )

        def fetch(db: sqlite3.Connection) -> tuple[list[ConversationSummary], int]:
            rows = db.execute(
                f"SELECT c.id, c.first, c.latest, c.turns, c.answered, "
                f"({turn_of.format('owner', 'ASC')}), "
                f"({turn_of.format('question', 'ASC')}), ({turn_of.format('status', 'DESC')}) "
                "FROM (SELECT conversation_id AS id, MIN(created_at) AS first, "
                f"MAX(created_at) AS latest, COUNT(*) AS turns, "
                f"SUM(answer IS NOT NULL) AS answered FROM sessions {where} "
                "GROUP BY conversation_id) c ORDER BY c.latest DESC, c.id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            total = db.execute(
                f"SELECT COUNT(DISTINCT conversation_id) FROM sessions {where}", params
            ).fetchone()[0]
            summaries = [
                ConversationSummary(
                    id=row[0],
                    created_at=datetime.fromisoformat(row[1]),
                    updated_at=datetime.fromisoformat(row[2]),
                    turns=row[3],
                    answered=row[4],
                    owner=row[5],
                    title=row[6],
                    status=cast(SessionStatus, row[7]),
                )
                for row in rows
            ]
            return summaries, total

        return await self._read(fetch)

    async def latest_answered(
        self, *, owner: str | None, client: str | None
    ) -> SessionRecord | None:
        clauses = ["answer IS NOT NULL"]
        params: list[str] = []
        for column, value in (("owner", owner), ("client", client)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)

        def fetch(db: sqlite3.Connection) -> SessionRecord | None:
            row = db.execute(
                f"SELECT {SELECT_COLUMNS} FROM sessions WHERE {' AND '.join(clauses)} "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params,
            ).fetchone()
            return _record(row) if row else None

        return await self._read(fetch)

    async def unfinished(self) -> list[SessionRecord]:
        marks = ", ".join(f"'{status}'" for status in sorted(UNFINISHED))

        def fetch(db: sqlite3.Connection) -> list[SessionRecord]:
            rows = db.execute(f"SELECT {SELECT_COLUMNS} FROM sessions WHERE status IN ({marks})")
            return [_record(row) for row in rows]

        return await self._read(fetch)

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        def fetch(db: sqlite3.Connection) -> list[StoredEvent]:
            rows = db.execute(
                "SELECT seq, type, data FROM events WHERE session_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (session_id, after, -1 if limit is None else limit),
            )
            return [StoredEvent(seq, type_, data) for seq, type_, data in rows]

        return await self._read(fetch)

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        """The events after ``after``, waiting up to ``timeout`` s for the first one:
        every append goes through this process, so a commit wakes its readers."""
        return await tail_by_signal(self._appended, self.events, session_id, after, timeout)
