"""The distributed session store: records, listings and event logs in Redis.

Records are hashes, listings sorted sets, each session's events one Redis Stream
whose entry ids are the sequence numbers (``<seq>-0``), so a reader anywhere
resumes with ``XREAD BLOCK`` after the last id it sent. Every multi-key write is
one Lua script (``redis_scripts.py`` describes the keys); an append is refused
whole unless its first sequence number is after the log's last one and, when it
names a lease token, unless that token still holds the session's lease: a worker
that lost its lease cannot write after its successor.

Retention: ``prune`` honours the ``SessionStore`` contract, deleting whole
conversations ``PRUNE_BATCH`` sessions per script (Redis runs one script at a
time, so every other client waits behind each: small ones keep that wait short),
and with ``retention`` set, a conversation whose every turn has finished also
expires by itself (Redis TTLs), counted from its last turn's end.

Faults: a full Redis (``maxmemory`` reached, no eviction) refuses a script at its
first write with ``OutOfMemoryError``, so nothing of it lands; deletions still go
through. Tests make writes fail that way on demand with ``fault``, as they do the
SQLite store's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deepresearch.errors import LeaseLost, SessionConflict, SessionNotFound, StaleAppend
from deepresearch.sessions import redis_scripts as scripts
from deepresearch.sessions.records import (
    UNFINISHED,
    ConversationSummary,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)
from deepresearch.sessions.redis_checkpoints import RedisCheckpointStore
from deepresearch.sessions.redis_leases import RedisLeases
from deepresearch.sessions.redis_scripts import RedisKeys
from deepresearch.sessions.redis_workers import RedisWorkers

# Conversations dropped per purge call; the rest go on the next one.
PURGE_BATCH = 100
# Retention deletes whole conversations, this many sessions per script at most (at
# least one conversation), so other clients wait behind one small script at a time.
PRUNE_BATCH = 200
# Conversations whose turns and statuses retention reads per round trip.
PRUNE_READ_PAGE = 500
# A command that meets a dropped connection is retried this often, backing off from
# 0.05 s to 1 s between tries (about 5 s in all): a Redis restart, not an outage.
RECONNECT_RETRIES = 8
# Entries one tail read returns at most; the caller reads again for more.
TAIL_COUNT = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A fault injected by tests, run before each write that adds data (a create, an
# append) is sent (``RedisSessionStore.fault``): it raises to make the write fail as
# a full Redis would, nothing of it stored.
Fault = Callable[[], None]


def _score(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a sorted set's double up to year 2255."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def _text(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _fields(record: SessionRecord) -> dict[str, str]:
    values: dict[str, str | None] = {
        "id": record.id,
        "question": record.question,
        "status": record.status,
        "created_at": record.created_at.isoformat(),
        "created_us": str(_score(record.created_at)),
        "owner": record.owner,
        "on_disconnect": record.on_disconnect,
        "started_at": _text(record.started_at),
        "ended_at": _text(record.ended_at),
        "answer": record.answer,
        "citations": json.dumps(record.citations),
        "error": record.error,
        "conversation": record.conversation,
        "turn": str(record.turn),
        "client": record.client,
        "generation": json.dumps(record.generation) if record.generation else None,
        "last_seq": str(record.last_seq),
    }
    return {name: value for name, value in values.items() if value is not None}


def _change_fields(changes: SessionChanges | None) -> dict[str, str]:
    if changes is None:
        return {}
    values: dict[str, str | None] = {
        "status": changes.status,
        "started_at": _text(changes.started_at),
        "ended_at": _text(changes.ended_at),
        "answer": changes.answer,
        "citations": json.dumps(changes.citations) if changes.citations is not None else None,
        "error": changes.error,
    }
    return {name: value for name, value in values.items() if value is not None}


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _record(fields: dict[str, str]) -> SessionRecord:
    session_id = fields["id"]
    conversation = fields.get("conversation", session_id)
    return SessionRecord(
        id=session_id,
        question=fields["question"],
        status=cast(SessionStatus, fields["status"]),
        created_at=datetime.fromisoformat(fields["created_at"]),
        owner=fields.get("owner"),
        on_disconnect=fields["on_disconnect"],
        started_at=_time(fields.get("started_at")),
        ended_at=_time(fields.get("ended_at")),
        answer=fields.get("answer"),
        citations=json.loads(fields.get("citations", "[]")),
        error=fields.get("error"),
        last_seq=int(fields.get("last_seq", "0")),
        conversation_id=conversation if conversation != session_id else None,
        turn=int(fields.get("turn", "1")),
        client=fields.get("client"),
        generation=json.loads(fields.get("generation", "{}")),
    )


def stream_event(entry_id: str, fields: dict[str, str]) -> StoredEvent:
    """A stream entry (id ``<seq>-0``) as the event it holds."""
    return StoredEvent(int(entry_id.split("-", 1)[0]), fields["t"], fields["d"])


def _refusal(exc: ResponseError) -> Exception:
    """The typed error for a script's refusal, or the original one."""
    message = str(exc)
    if message.startswith("STALE"):
        return StaleAppend(message.removeprefix("STALE "))
    if message.startswith("LEASELOST"):
        return LeaseLost(message.removeprefix("LEASELOST "))
    if message.startswith("NOSESSION"):
        return SessionNotFound(message.removeprefix("NOSESSION "))
    if message.startswith("BUSY"):
        return ConversationBusy(message.removeprefix("BUSY "))
    if message.startswith("QUEUEFULL"):
        return QueueFull(int(message.removeprefix("QUEUEFULL ")))
    if message.startswith("QUOTA"):
        return QuotaFull(int(message.removeprefix("QUOTA ")))
    return exc


@dataclass(frozen=True)
class Admit:
    """Admission's checks for ``create`` (distributed mode), made in its script.

    ``follow_up``: refuse while another turn of the conversation is unfinished.
    ``slots``: the cluster's slots (the sum of its live workers'); -1 skips the queue
    checks. The waiting sessions are the ``queued`` ones beyond the free slots (slots
    less the ``processing`` ones); a new one that would wait is refused when
    ``max_queue`` wait already, or ``max_queued_per_key`` (0: no quota) of its owner's.
    """

    follow_up: bool
    slots: int
    max_queue: int = 0
    max_queued_per_key: int = 0


class ConversationBusy(SessionConflict):
    """A turn of the conversation (the session id given) is still unfinished."""


class QueueFull(Exception):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} sessions waiting")
        self.waiting = waiting


class QuotaFull(Exception):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} of this owner's sessions waiting")
        self.waiting = waiting


class RedisSessionStore:
    """A ``SessionStore`` (and ``EventLog``) on one Redis server.

    ``url`` is a redis-py URL (``redis://host:port/db``); ``prefix`` namespaces every
    key, so several deployments (or tests) can share a server; ``retention``, when
    set, makes finished conversations expire by TTL.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "deepresearch",
        retention: timedelta | None = None,
    ) -> None:
        self._url = url
        self.keys = RedisKeys(prefix)
        self._retention_ms = int(retention.total_seconds() * 1000) if retention else 0
        self._client: Redis | None = None
        self.fault: Fault | None = None  # tests: make writes fail as a full Redis would

    @property
    def url(self) -> str:
        return self._url

    @property
    def client(self) -> Redis:
        """The open client, to share with leases, checkpoints and the job queue."""
        assert self._client is not None, "store is not open"
        return self._client

    async def open(self) -> None:
        # decode_responses: every value we keep is text (JSON included). A command that
        # meets a dropped connection (Redis restarted) reconnects and is sent again;
        # the scripts make a repeated create or append a no-op, not a conflict.
        self._client = Redis.from_url(
            self._url,
            decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RECONNECT_RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        # Fail at start, not at first use. (redis-py types every command as sync-or-async.)
        await cast("Awaitable[bool]", self._client.ping())
        self._create = self._client.register_script(scripts.CREATE)
        self._write = self._client.register_script(scripts.WRITE)
        self._purge = self._client.register_script(scripts.PURGE)
        self._prune = self._client.register_script(scripts.PRUNE)

    def leases(self) -> RedisLeases:
        """Session leases on this store's client and prefix."""
        return RedisLeases(self.client, self.keys)

    def checkpoints(self) -> RedisCheckpointStore:
        """Agent checkpoints on this store's client and prefix."""
        return RedisCheckpointStore(self.client, self.keys)

    def workers(self) -> RedisWorkers:
        """Worker heartbeats (cluster-wide health) on this store's client and prefix."""
        return RedisWorkers(self.client, self.keys)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- writes -----------------------------------------------------------------------------

    async def create(self, record: SessionRecord, *, admit: Admit | None = None) -> None:
        """As ``SessionStore.create``; with ``admit``, also admission's checks, in the
        same script as the creation (so two nodes cannot both pass them): refused with
        ``ConversationBusy``, ``QueueFull`` or ``QuotaFull``, nothing written."""
        fields = _fields(record)
        owner = record.owner or ""
        limits = admit or Admit(follow_up=False, slots=-1)
        args: list[str | int] = [
            self.keys.prefix,
            record.id,
            _score(record.created_at),
            record.conversation,
            record.turn,
            owner,
            record.status,
            "1" if record.answer is not None else "0",
            uuid.uuid4().hex,  # write id: a retried call is recognised, not repeated
            "1" if limits.follow_up else "0",
            limits.slots,
            limits.max_queue,
            limits.max_queued_per_key,
        ]
        for name, value in fields.items():
            args += [name, value]
        if self.fault is not None:
            self.fault()
        try:
            created = await self._create(args=args)
        except ResponseError as exc:
            raise _refusal(exc) from exc
        if not created:
            raise SessionConflict(f"session {record.id} already exists")

    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        """As ``SessionStore.append``; refused whole with ``StaleAppend`` when the first
        event is not after the log's last, and with ``LeaseLost`` when ``lease`` (a
        token) no longer holds the session's lease."""
        args: list[str | int] = [
            self.keys.prefix,
            session_id,
            lease or "",
            self._retention_ms,
            uuid.uuid4().hex,  # write id: a retried call is recognised, not repeated
            len(events),
        ]
        for event in events:
            args += [event.seq, event.type, event.data]
        for name, value in _change_fields(changes).items():
            args += [name, value]
        if self.fault is not None:
            self.fault()
        try:
            await self._write(args=args)
        except ResponseError as exc:
            raise _refusal(exc) from exc

    async def update(self, session_id: str, changes: SessionChanges) -> None:
        await self.append(session_id, (), changes)

    async def purge_expired(self) -> int:
        """Drop conversations whose retention deadline has passed from the listings
        (their bulky keys have expired by themselves). Returns sessions dropped."""
        dropped = 0
        while True:
            batch = int(await self._purge(args=[self.keys.prefix, PURGE_BATCH]))
            dropped += batch
            if batch == 0:
                return dropped

    async def prune(self, *, older_than: datetime, keep: int) -> int:
        """Delete old finished conversations, oldest first, ``PRUNE_BATCH`` sessions
        per script (each script checks again that no turn has started meanwhile)."""
        removed = await self.purge_expired()
        doomed = await self._doomed(_score(older_than), keep)
        batch: list[str] = []
        sessions = 0
        for conversation_id, count in reversed(doomed):
            if batch and sessions + count > PRUNE_BATCH:
                removed += int(await self._prune(args=[self.keys.prefix, *batch]))
                batch, sessions = [], 0
            batch.append(conversation_id)
            sessions += count
        if batch:
            removed += int(await self._prune(args=[self.keys.prefix, *batch]))
        return removed

    async def _doomed(self, cutoff: int, keep: int) -> list[tuple[str, int]]:
        """The conversations retention deletes, newest first, each with how many
        sessions it holds: the SQLite store's rule (newest first, busy ones skipped
        and not counted, the newest ``keep`` sessions kept, older than ``cutoff`` not).
        The turns and their statuses are read ``PRUNE_READ_PAGE`` conversations at a
        time."""
        client = self.client
        ranked = await client.zrevrange(self.keys.conversations(), 0, -1, withscores=True)
        doomed: list[tuple[str, int]] = []
        kept = 0
        full = False
        for start in range(0, len(ranked), PRUNE_READ_PAGE):
            page = ranked[start : start + PRUNE_READ_PAGE]
            async with client.pipeline(transaction=False) as pipe:
                for conversation_id, _ in page:
                    pipe.zrange(self.keys.turns(conversation_id), 0, -1)
                turn_lists: list[list[str]] = await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                for turns in turn_lists:
                    for session_id in turns:
                        pipe.hget(self.keys.session(session_id), "status")
                statuses = iter(await pipe.execute())
            for (conversation_id, latest), turns in zip(page, turn_lists, strict=True):
                turn_statuses = [next(statuses) for _ in turns]  # consumed in step with turns
                if any(status in UNFINISHED for status in turn_statuses):
                    continue
                full = full or kept + len(turns) > keep
                if full or latest < cutoff:
                    doomed.append((conversation_id, len(turns)))
                else:
                    kept += len(turns)
        return doomed

    # -- reads ------------------------------------------------------------------------------

    async def _records(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """The records of these ids, in order, skipping any that have just expired."""
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(self.keys.session(session_id))
            rows: list[dict[str, str]] = await pipe.execute()
        return [_record(row) for row in rows if row]

    async def get(self, session_id: str) -> SessionRecord | None:
        found = await self._records([session_id])
        return found[0] if found else None

    async def list_sessions(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: SessionStatus | None = None,
        owner: str | None = None,
    ) -> tuple[list[SessionRecord], int]:
        await self.purge_expired()
        client = self.client
        if status is not None and owner is not None:
            # Both filters: intersect the two indexes (O(matches); a listing, not a hot path).
            both: list[str] = await client.zinter(
                [self.keys.sessions(status=status), self.keys.sessions(owner=owner)]
            )
            both.reverse()
            return await self._records(both[offset : offset + limit]), len(both)
        index = self.keys.sessions(status=status, owner=owner)
        async with client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            page, total = await pipe.execute()
        return await self._records(page), int(total)

    async def conversation(self, conversation_id: str) -> list[SessionRecord]:
        turns: list[str] = await self.client.zrange(self.keys.turns(conversation_id), 0, -1)
        return await self._records(turns)

    async def list_conversations(
        self, *, limit: int, offset: int = 0, owner: str | None = None
    ) -> tuple[list[ConversationSummary], int]:
        await self.purge_expired()
        index = self.keys.conversations(owner)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            page, total = await pipe.execute()
        summaries = []
        for conversation_id in page:
            summary = _summary(conversation_id, await self.conversation(conversation_id), owner)
            if summary is not None:
                summaries.append(summary)
        return summaries, int(total)

    async def latest_answered(
        self, *, owner: str | None, client: str | None
    ) -> SessionRecord | None:
        index = self.keys.answered(owner)
        start = 0
        while True:
            chunk: list[str] = await self.client.zrevrange(index, start, start + 99)
            if not chunk:
                return None
            for record in await self._records(chunk):
                if client is None or record.client == client:
                    return record
            start += len(chunk)

    async def unfinished(self) -> list[SessionRecord]:
        found: list[SessionRecord] = []
        for status in sorted(UNFINISHED):
            ids: list[str] = await self.client.zrange(self.keys.sessions(status=status), 0, -1)
            found += await self._records(ids)
        return found

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        entries: list[tuple[str, dict[str, str]]] = await self.client.xrange(
            self.keys.events(session_id), min=f"({after}-0", max="+", count=limit
        )
        return [stream_event(entry_id, fields) for entry_id, fields in entries]

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        """Events after ``after``: at once if there are some, else the first ones to
        arrive within ``timeout`` seconds (``XREAD BLOCK``), else an empty list."""
        if timeout <= 0:
            return await self.events(session_id, after)
        key = self.keys.events(session_id)
        answer: list[Any] = await self.client.xread(
            {key: f"{after}-0"}, count=TAIL_COUNT, block=max(1, int(timeout * 1000))
        )
        if not answer:
            return []
        _, entries = answer[0]
        return [stream_event(entry_id, fields) for entry_id, fields in entries]


def _summary(
    conversation_id: str, turns: list[SessionRecord], owner: str | None
) -> ConversationSummary | None:
    """As the SQLite store sums up a conversation: counts and times over the owner's
    turns; title and owner from its first turn, status from its latest."""
    mine = [turn for turn in turns if owner is None or turn.owner == owner]
    if not mine:  # expired between the listing and this read
        return None
    return ConversationSummary(
        id=conversation_id,
        owner=turns[0].owner,
        title=turns[0].question,
        created_at=min(turn.created_at for turn in mine),
        updated_at=max(turn.created_at for turn in mine),
        turns=len(mine),
        answered=sum(turn.answer is not None for turn in mine),
        status=turns[-1].status,
    )
