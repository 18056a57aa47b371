"""Sessions that outlive connections.

Each session runs as its own task. Its events are numbered, written to the
store, and only then handed to whoever follows it, so a follower that reconnects
with ``Last-Event-ID`` gets exactly what it missed from the store and the rest
live. The task owns one admission ticket and releases it on every path out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Literal

from deepresearch.agent.base import Agent
from deepresearch.agent.conversation import Exchange
from deepresearch.config import AgentTemplate, Settings
from deepresearch.errors import Overloaded, SessionConflict, SessionFailure, SessionNotFound
from deepresearch.events import (
    TERMINAL_TYPES,
    Cancelled,
    Error,
    Event,
    FinalAnswer,
    Init,
    Queued,
    SessionStart,
    Timeout,
    utc_now,
)
from deepresearch.runtime.admission import Admission, QueueTimeout, Ticket
from deepresearch.runtime.deltas import ACCUMULATED, Compactor, WireView, since_of
from deepresearch.runtime.metrics import Metrics
from deepresearch.sessions.records import (
    STATUS_BY_TERMINAL_EVENT,
    UNFINISHED,
    ConversationSummary,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)
from deepresearch.sessions.store import SessionStore

log = logging.getLogger("deepresearch.sessions")

OnDisconnect = Literal["grace", "continue", "cancel"]
# (session_id, config) -> Agent; a follow-up's also gets ``history=`` (the conversation's
# earlier questions and answers, a tuple of Exchange), so a factory without that keyword
# still serves every first question.
AgentFactory = Callable[..., Agent]

# A follower further behind than this stops being fed live and catches up from the store.
LISTENER_BUFFER = 512
# How long a new session waits for its first follower before the disconnect policy applies.
ATTACH_WINDOW = 10.0
PRUNE_EVERY = 600.0
# A waiting session reports its queue position at most this often (the latest one).
QUEUE_REPORT_INTERVAL = 1.0
# Catch-up reads from the store take this many events at a time.
READ_PAGE = 1000
# An outcome the store could not take is offered to it again this often.
SETTLE_EVERY = 1.0
# Retry-After when the store cannot create sessions (a full disk, most likely).
STORE_RETRY_AFTER = 10


class StorageFailure(SessionFailure):
    """The session store could not save one of this session's events."""


@dataclass(frozen=True)
class SessionRequest:
    question: str
    generation: dict[str, float | int | None] = field(default_factory=dict)
    session_id: str | None = None
    on_disconnect: OnDisconnect = "grace"
    owner: str | None = None
    client: str | None = None  # digest of the client's address
    # Earlier turns the client sent itself (the OpenAI facade); a stored conversation's
    # turns are used instead when session_id names one.
    history: tuple[Exchange, ...] = ()


@dataclass(frozen=True)
class _Placement:
    """Where a new session goes: its id, and its conversation when it follows up."""

    session_id: str
    conversation_id: str | None = None  # None: it starts a conversation of its own
    turn: int = 1
    history: tuple[Exchange, ...] = ()

    @property
    def conversation(self) -> str:
        return self.conversation_id or self.session_id


def owner_of(api_key: str | None) -> str | None:
    """Who owns a session: a digest of the client key, never the key itself."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class _Listener:
    __slots__ = ("lagging", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StoredEvent] = asyncio.Queue()
        self.lagging = False


class _LiveSession:
    def __init__(self, record: SessionRecord, ticket: Ticket) -> None:
        self.id = record.id
        self.record = record
        self.ticket = ticket
        self.seq = 0
        self.listeners: set[_Listener] = set()
        self.task: asyncio.Task[None] | None = None
        self.grace: asyncio.TimerHandle | None = None
        self.cancel_reason = "cancelled"
        self.cancel_requested = False
        self.finishing: asyncio.Task[None] | None = None  # writing the terminal event
        self.terminal: StoredEvent | None = None  # once decided, stored or not
        self.ready = asyncio.Event()  # set once its record exists and its task runs
        self.compactor = Compactor()  # streamed text is stored as deltas

    @property
    def tag(self) -> str:
        return f"[session {self.id[:8]}]"


class SessionManager:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        admission: Admission,
        metrics: Metrics,
        agent_factory: AgentFactory,
    ) -> None:
        self._settings = settings
        self._store = store
        self._admission = admission
        self._metrics = metrics
        self._agent_factory = agent_factory
        self._template = settings.agent_template()
        self._live: dict[str, _LiveSession] = {}
        self._pruner: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()  # referenced until done
        # Ended sessions whose outcome the store has not taken yet (a full disk): the
        # terminal event and the record's changes, offered again every SETTLE_EVERY.
        self._unsettled: dict[str, tuple[StoredEvent, SessionChanges]] = {}
        self._settler: asyncio.Task[None] | None = None
        self._busy_conversations: set[str] = set()  # a turn is starting or running

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Settle sessions a previous process left unfinished, prune, start pruning."""
        for record in await self._store.unfinished():
            event = Error(
                session_id=record.id,
                content=f"interrupted: the server stopped while this session was {record.status}",
            )
            stored = StoredEvent(record.last_seq + 1, event.type, event.model_dump_json())
            changes = SessionChanges(status="failed", ended_at=utc_now(), error=event.content)
            try:
                await self._store.append(record.id, [stored], changes)
            except Exception as exc:  # a full disk must not keep the server from starting
                log.error("[session %s] could not mark it failed: %s", record.id[:8], exc)
                self._unsettle(record.id, stored, changes)
                continue
            log.warning("[session %s] interrupted by a restart: marked failed", record.id[:8])
        try:
            await self._prune()
        except Exception:
            log.exception("retention: pruning failed")
        self._pruner = asyncio.create_task(self._prune_forever())

    async def close(self) -> None:
        """Cancel every live session (they end ``cancelled``) and stop pruning."""
        if self._pruner is not None:
            self._pruner.cancel()
        live = list(self._live.values())
        if self._settler is not None:
            self._settler.cancel()
        for session in live:
            self._cancel(session, "cancelled: the server is shutting down")
        tasks = [session.task for session in live if session.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def _prune(self) -> None:
        older_than = utc_now() - timedelta(days=self._settings.retention_days)
        removed = await self._store.prune(
            older_than=older_than, keep=self._settings.retention_max_sessions
        )
        if removed:
            log.info("retention: removed %d old sessions", removed)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                await self._prune()
            except Exception:
                log.exception("retention: pruning failed")

    # -- starting, following, cancelling ----------------------------------------------------

    def owner_of_session(self, session_id: str) -> str | None:
        """The key owner of a running session (its tools act for that key alone)."""
        live = self._live.get(session_id)
        return live.record.owner if live is not None else None

    @property
    def store(self) -> SessionStore:
        return self._store

    @property
    def live_count(self) -> int:
        return len(self._live)

    async def start(self, request: SessionRequest) -> str:
        """Admit and start a session; ``Overloaded`` or ``SessionConflict`` create nothing.

        A ``session_id`` not in use names the new session; the id of an existing
        session or conversation asks a follow-up in that conversation (the new
        session gets a fresh id).
        """
        # Validate the request's settings before anything is reserved.
        config = self._template.for_request(**request.generation)
        place = await self._place(request)
        session_id = place.session_id
        if session_id in self._live or place.conversation in self._busy_conversations:
            raise SessionConflict(self._busy_message(place))
        ticket = self._admission.admit(session_id, request.owner or "")
        self._busy_conversations.add(place.conversation)
        record = SessionRecord(
            id=session_id,
            question=request.question,
            status="queued",
            created_at=utc_now(),
            owner=request.owner,
            on_disconnect=request.on_disconnect,
            conversation_id=place.conversation_id,
            turn=place.turn,
            client=request.client,
        )
        # Live before its record is written: a DELETE that arrives meanwhile finds it
        # (and waits for it) instead of finding a queued record with nothing behind it.
        live = _LiveSession(record, ticket)
        self._live[session_id] = live
        try:
            await self._store.create(record)
        except BaseException as exc:
            self._live.pop(session_id, None)
            self._admission.release(ticket)
            self._busy_conversations.discard(place.conversation)
            live.ready.set()
            if isinstance(exc, Exception) and not isinstance(exc, SessionConflict):
                log.error("[session %s] the store cannot create it: %s", session_id[:8], exc)
                raise Overloaded(
                    "the session store cannot save new sessions just now (is the disk full?)",
                    retry_after=STORE_RETRY_AFTER,
                ) from exc
            raise
        live.task = asyncio.create_task(
            self._run(live, config, place.history or request.history),
            name=f"session-{session_id}",
        )
        live.task.add_done_callback(lambda _: self._task_done(live))
        live.ready.set()
        if live.cancel_requested:
            live.task.cancel()  # a DELETE came while the record was being written
        if request.on_disconnect != "continue":
            live.grace = asyncio.get_running_loop().call_later(
                max(ATTACH_WINDOW, self._settings.disconnect_grace), self._unwatched, live
            )
        question = request.question if self._settings.log_questions else "(question not logged)"
        log.info("%s admitted (%s): %s", live.tag, ticket.state, question)
        return session_id

    async def _place(self, request: SessionRequest) -> _Placement:
        asked = request.session_id
        if asked is None:
            return _Placement(str(uuid.uuid4()))
        earlier = await self._store.get(asked)
        if earlier is None:
            return _Placement(asked)
        if request.owner is not None and earlier.owner != request.owner:
            raise SessionConflict(f"session {asked} already exists")
        turns = [self._settled(t) for t in await self._store.conversation(earlier.conversation)]
        if any(turn.status in UNFINISHED for turn in turns):
            raise SessionConflict(self._busy_message(_Placement("", earlier.conversation)))
        return _Placement(
            str(uuid.uuid4()),
            conversation_id=earlier.conversation,
            turn=max(turn.turn for turn in turns) + 1,
            history=tuple(Exchange(t.question, t.answer) for t in turns if t.answer),
        )

    @staticmethod
    def _busy_message(place: _Placement) -> str:
        if place.conversation_id is None:
            return f"session {place.session_id} already exists"
        return (
            f"conversation {place.conversation}: the previous question is still being "
            "researched; wait for it to end (or cancel it) before asking a follow-up"
        )

    def _task_done(self, live: _LiveSession) -> None:
        """Whatever happened to the task, its ticket goes back; and a task cancelled
        before its first step (so ``_run`` never ran) still gets its terminal event."""
        self._admission.release(live.ticket)
        self._busy_conversations.discard(live.record.conversation)
        if live.finishing is None and live.id in self._live:
            orphan = asyncio.ensure_future(self._settle_unstarted(live))
            live.finishing = orphan
            self._orphans.add(orphan)
            orphan.add_done_callback(self._orphans.discard)

    async def _settle_unstarted(self, live: _LiveSession) -> None:
        """The stream of a session cancelled before it ran: ``session_start``, then
        ``cancelled``, like any other."""
        start = SessionStart(session_id=live.id, question=live.record.question, content=live.id)
        try:
            await self._emit(live, start)
        except Exception:
            log.exception("%s could not store its start", live.tag)
        terminal = Cancelled(session_id=live.id, content=live.cancel_reason)
        await self._finish(live, terminal, None, 0.0, None)

    async def cancel(self, session_id: str, owner: str | None, reason: str) -> SessionRecord:
        """Cancel a queued or running session and wait until it has ended."""
        live = self._live.get(session_id)
        if live is None or (owner is not None and live.record.owner != owner):
            record = await self.get(session_id, owner)
            raise SessionConflict(f"session {session_id} already ended ({record.status})")
        self._cancel(live, reason)
        await live.ready.wait()
        if live.task is None:
            raise SessionNotFound(f"no session {session_id}")  # its record was never written
        await asyncio.wait([live.task])
        if live.finishing is not None:
            await asyncio.wait([live.finishing])
        return await self.get(session_id, owner)

    def _cancel(self, live: _LiveSession, reason: str) -> None:
        # Once: a second cancel (or one while the outcome is being written) must not
        # interrupt the writing of the terminal event.
        if live.cancel_requested or live.finishing is not None:
            return
        live.cancel_requested = True
        live.cancel_reason = reason
        if live.task is not None:
            live.task.cancel()

    async def get(self, session_id: str, owner: str | None) -> SessionRecord:
        record = await self._store.get(session_id)
        if record is None or (owner is not None and record.owner != owner):
            raise SessionNotFound(f"no session {session_id}")
        return self._settled(record)

    def _settled(self, record: SessionRecord) -> SessionRecord:
        """The record as it is, though its outcome may not have reached the store yet."""
        pending = self._unsettled.get(record.id)
        if pending is None:
            return record
        terminal, changes = pending
        return replace(
            record,
            status=changes.status or record.status,
            ended_at=changes.ended_at,
            answer=changes.answer,
            citations=changes.citations or [],
            error=changes.error,
            last_seq=max(record.last_seq, terminal.seq),
        )

    async def list_sessions(
        self,
        *,
        limit: int,
        offset: int,
        status: SessionStatus | None,
        owner: str | None,
    ) -> tuple[list[SessionRecord], int]:
        records, total = await self._store.list_sessions(
            limit=limit, offset=offset, status=status, owner=owner
        )
        return [self._settled(record) for record in records], total

    async def conversation(self, conversation_id: str, owner: str | None) -> list[SessionRecord]:
        """A conversation's turns, first first; ``SessionNotFound`` if it is not the caller's."""
        turns = [self._settled(t) for t in await self._store.conversation(conversation_id)]
        if not turns or (owner is not None and turns[0].owner != owner):
            raise SessionNotFound(f"no conversation {conversation_id}")
        return turns

    async def list_conversations(
        self, *, limit: int, offset: int, owner: str | None
    ) -> tuple[list[ConversationSummary], int]:
        return await self._store.list_conversations(limit=limit, offset=offset, owner=owner)

    async def latest_answered(
        self, *, owner: str | None, client: str | None
    ) -> SessionRecord | None:
        return await self._store.latest_answered(owner=owner, client=client)

    async def follow(
        self,
        session_id: str,
        after: int = 0,
        idle: float | None = None,
        *,
        deltas: bool = False,
    ) -> AsyncIterator[StoredEvent | None]:
        """The session's events after ``after`` as the wire carries them, live until
        the terminal one (``deltas``: streamed text as pieces, see ``runtime.deltas``).

        Yields ``None`` when nothing happened for ``idle`` seconds (a transport
        sends a heartbeat then). Raises ``SessionNotFound`` before yielding.
        """
        view = WireView(session_id, deltas=deltas)
        live = self._live.get(session_id)
        if live is None:
            last = after
            async for row in self._rows(view, session_id, after):
                for sent in view.feed(row):
                    yield sent
                last = row.seq
                if row.type in TERMINAL_TYPES:
                    break
            else:
                pending = self._unsettled.get(session_id)
                if pending is not None and pending[0].seq > last:
                    for sent in view.feed(pending[0]):  # ended; its outcome not yet stored
                        yield sent
            for sent in view.flush():
                yield sent
            return
        listener = _Listener()
        self._attach(live, listener)
        try:
            async for out in self._follow_live(live, listener, view, after, idle):
                yield out
        finally:
            self._detach(live, listener)

    async def _rows(
        self, view: WireView, session_id: str, after: int
    ) -> AsyncIterator[StoredEvent]:
        """The stored rows after ``after``, a page at a time (a long session's events
        are never all in memory at once); ``view`` primed from the first page."""
        rows = await self._read(view, session_id, after)
        while rows:
            for row in rows:
                yield row
            if len(rows) < READ_PAGE:
                return
            rows = await self._store.events(session_id, rows[-1].seq, READ_PAGE)

    async def _read(self, view: WireView, session_id: str, after: int) -> list[StoredEvent]:
        """The first page of stored rows after ``after``, with ``view`` primed by the
        earlier rows its streamed text needs (the start of a reasoning round cut at
        ``after``)."""
        rows = await self._store.events(session_id, after, READ_PAGE)
        starts = []
        for kind in ACCUMULATED:
            first = next((row for row in rows if row.type == kind), None)
            since = since_of(first) if first is not None else None
            if since is not None and since <= after:
                starts.append(since)
        if starts:
            earlier = await self._store.events(session_id, min(starts) - 1, after - min(starts) + 1)
            view.prime([row for row in earlier if row.seq <= after])
        return rows

    async def _follow_live(
        self,
        live: _LiveSession,
        listener: _Listener,
        view: WireView,
        after: int,
        idle: float | None,
    ) -> AsyncIterator[StoredEvent | None]:
        last = after  # the last row fed to the view
        catch_up, primed = True, False
        while True:
            if catch_up or listener.lagging:
                catch_up = listener.lagging = False
                while not listener.queue.empty():
                    listener.queue.get_nowait()
                while True:  # the store, a page at a time
                    if primed:
                        rows = await self._store.events(live.id, last, READ_PAGE)
                    else:
                        rows, primed = await self._read(view, live.id, last), True
                    for row in rows:
                        for out in view.feed(row):
                            yield out
                        last = row.seq
                        if row.type in TERMINAL_TYPES:
                            return
                    if len(rows) < READ_PAGE:
                        break
                if live.terminal is not None:
                    # It ended, and its terminal event is not in the store (the write
                    # failed, or is still being retried): it is the last event anyway.
                    if live.terminal.seq > last:
                        for out in view.feed(live.terminal):
                            yield out
                    for out in view.flush():
                        yield out
                    return
            try:
                async with asyncio.timeout(idle):
                    row = await listener.queue.get()
            except TimeoutError:
                if live.terminal is not None:
                    catch_up = True  # ended without its terminal reaching this queue
                    continue
                yield None
                continue
            if row.seq <= last:
                if row.type in TERMINAL_TYPES:
                    return  # the client had seen past the end already
                continue
            if row.seq > last + 1:
                # A gap: an event was stored but not handed out (its writer was
                # cancelled between the two). The store has it, and this one too.
                listener.lagging = True
                continue
            for out in view.feed(row):
                yield out
            last = row.seq
            if row.type in TERMINAL_TYPES:
                return

    def _attach(self, live: _LiveSession, listener: _Listener) -> None:
        live.listeners.add(listener)
        if live.grace is not None:
            live.grace.cancel()
            live.grace = None

    def _detach(self, live: _LiveSession, listener: _Listener) -> None:
        live.listeners.discard(listener)
        if live.listeners or live.id not in self._live:
            return
        policy = live.record.on_disconnect
        if policy == "cancel":
            self._cancel(live, "cancelled: the client disconnected")
        elif policy == "grace":
            live.grace = asyncio.get_running_loop().call_later(
                self._settings.disconnect_grace, self._unwatched, live
            )

    def _unwatched(self, live: _LiveSession) -> None:
        live.grace = None
        if not live.listeners and live.id in self._live:
            log.info("%s no client came back: cancelling", live.tag)
            self._cancel(live, "cancelled: no client followed the session")

    # -- outcomes the store could not take ----------------------------------------------------

    def _unsettle(self, session_id: str, terminal: StoredEvent, changes: SessionChanges) -> None:
        self._unsettled[session_id] = (terminal, changes)
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_forever(), name="settle")

    @property
    def unsettled_count(self) -> int:
        return len(self._unsettled)

    async def _settle_forever(self) -> None:
        while self._unsettled:
            await asyncio.sleep(SETTLE_EVERY)
            await self.settle()

    async def settle(self) -> None:
        """Offer each unstored outcome to the store again (once space is back it takes
        them, and the records say how the sessions ended)."""
        for session_id, (terminal, changes) in list(self._unsettled.items()):
            try:
                await self._store.append(session_id, [terminal], changes)
            except Exception as exc:
                log.debug("[session %s] outcome still not stored: %s", session_id[:8], exc)
                continue
            self._unsettled.pop(session_id, None)
            log.info("[session %s] outcome stored after a failed write", session_id[:8])

    # -- running ----------------------------------------------------------------------------

    async def _emit(
        self, live: _LiveSession, event: Event, changes: SessionChanges | None = None
    ) -> None:
        # The number is taken only once the event is stored: a failed write leaves
        # no gap, and the session ends (StorageFailure) with the next number.
        # Streamed text is stored as a delta against the rows stored before it: the
        # compactor moves on only with the number (a failed write moves neither).
        seq = live.seq + 1
        stored = live.compactor.row(seq, event)
        try:
            await self._store.append(live.id, [stored], changes)
        except asyncio.CancelledError:
            live.seq = seq  # the write goes on without us and may land: never reuse it
            live.compactor.commit()
            raise
        except Exception as exc:
            log.error("%s the store could not save a %s event: %s", live.tag, event.type, exc)
            raise StorageFailure(
                f"the session store could not save this session's events ({exc})"
            ) from exc
        live.seq = seq
        live.compactor.commit()
        self._fan_out(live, stored)

    def _fan_out(self, live: _LiveSession, stored: StoredEvent) -> None:
        self._metrics.events.inc()
        for listener in live.listeners:
            if listener.lagging:
                continue
            if listener.queue.qsize() >= LISTENER_BUFFER:
                listener.lagging = True
            listener.queue.put_nowait(stored)

    async def _run(
        self, live: _LiveSession, config: AgentTemplate, history: tuple[Exchange, ...] = ()
    ) -> None:
        sid = live.id
        loop = asyncio.get_running_loop()
        admitted = loop.time()
        started: float | None = None
        final: FinalAnswer | None = None
        terminal: Event
        try:
            await self._emit(
                live, SessionStart(session_id=sid, question=live.record.question, content=sid)
            )
            async for position in self._admission.wait_turn(
                live.ticket, self._settings.queue_timeout, QUEUE_REPORT_INTERVAL
            ):
                await self._emit(
                    live,
                    Queued(
                        session_id=sid,
                        position=position,
                        content=f"waiting for a free slot: position {position}",
                    ),
                )
            started = loop.time()
            self._metrics.queue_wait.observe(started - admitted)
            log.info("%s acquired slot after %.2f s in the queue", live.tag, started - admitted)
            await self._emit(
                live,
                Init(session_id=sid, content="slot acquired; agent ready"),
                SessionChanges(status="processing", started_at=utc_now()),
            )
            if history:
                agent = self._agent_factory(sid, config, history=history)
            else:
                agent = self._agent_factory(sid, config)
            terminal = Error(session_id=sid, content="the agent stopped without an outcome")
            async with (
                asyncio.timeout(config.max_run_seconds),
                # Closed on every way out, so the agent's model call is aborted at once.
                aclosing(agent.run(live.record.question)) as events,
            ):
                async for event in events:
                    if event.type in TERMINAL_TYPES:
                        terminal = event
                        break
                    if isinstance(event, FinalAnswer):
                        final = event
                    await self._emit(live, event)
        except QueueTimeout as exc:
            terminal = Timeout(session_id=sid, content=f"timeout: {exc}")
        except TimeoutError:
            terminal = Timeout(
                session_id=sid,
                content=f"timeout: the research ran past {config.max_run_seconds:g} s",
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            while task is not None and task.cancelling():
                task.uncancel()
            terminal = Cancelled(session_id=sid, content=live.cancel_reason)
        except SessionFailure as exc:
            terminal = Error(session_id=sid, content=str(exc))
        except Exception as exc:
            log.exception("%s failed unexpectedly", live.tag)
            terminal = Error(session_id=sid, content=f"internal error: {type(exc).__name__}")
        finally:
            self._admission.release(live.ticket)
        live.finishing = asyncio.ensure_future(
            self._finish(live, terminal, final, admitted, started)
        )
        await asyncio.shield(live.finishing)

    async def _finish(
        self,
        live: _LiveSession,
        terminal: Event,
        final: FinalAnswer | None,
        admitted: float,
        started: float | None,
    ) -> None:
        status = STATUS_BY_TERMINAL_EVENT[terminal.type]
        changes = SessionChanges(
            status=status,
            ended_at=utc_now(),
            answer=final.answer_data.answer if final else None,
            citations=[c.model_dump() for c in final.answer_data.citations] if final else None,
            error=terminal.content if status != "completed" else None,
        )
        live.seq += 1
        stored = StoredEvent(live.seq, terminal.type, terminal.model_dump_json())
        live.terminal = stored
        try:
            await self._store.append(live.id, [stored], changes)
        except Exception as exc:
            # Its followers still get the terminal event, and the record reads as
            # ended; the store is offered the outcome again until it takes it.
            log.error("%s outcome not stored (%s); will retry", live.tag, exc)
            self._unsettle(live.id, stored, changes)
        finally:
            self._fan_out(live, stored)
            if live.grace is not None:
                live.grace.cancel()
            self._live.pop(live.id, None)
        now = asyncio.get_running_loop().time()
        self._metrics.sessions.labels(outcome=status).inc()
        run = f"{now - started:.2f} s" if started is not None else "never ran"
        waited = (started or now) - admitted
        if started is not None:
            self._metrics.run_time.observe(now - started)
            self._admission.record_run(now - started)
        log.info("%s %s; queue wait %.2f s, run %s; slot released", live.tag, status, waited, run)
