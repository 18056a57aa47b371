"""Sessions that outlive connections, in one process.

The manager composes the split (see ``docs/design.md``, "Distributed mode"): each
session runs as its own task around a ``SessionRun`` (``runtime/runner.py``), its
followers read the event log through a ``Follower`` (``runtime/follower.py``), and
``Retention`` prunes. What is the manager's own: admission (the task owns one
ticket and releases it on every path out), the conversations a turn is running
in, the disconnect policy's grace timers, cancel, outcomes the store could not
take yet, and what a restart does with the sessions the last process left.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

from deepresearch.agent.conversation import Exchange
from deepresearch.config import AgentTemplate, Settings
from deepresearch.errors import ClientError, Overloaded, SessionConflict, SessionNotFound
from deepresearch.events import Error, utc_now
from deepresearch.runtime.admission import Admission, Ticket
from deepresearch.runtime.follower import READ_PAGE, Follower, LocalTail
from deepresearch.runtime.metrics import Metrics
from deepresearch.runtime.queries import StoredSessions, busy_message
from deepresearch.runtime.retention import PRUNE_EVERY, Retention
from deepresearch.runtime.runner import (
    AgentFactory,
    RunOutcome,
    SessionRun,
    StorageFailure,
    WaitTurn,
)
from deepresearch.sessions.checkpoints import CheckpointStore
from deepresearch.sessions.records import (
    SessionChanges,
    SessionRecord,
    StoredEvent,
)
from deepresearch.sessions.store import SessionStore

log = logging.getLogger("deepresearch.sessions")

__all__ = [
    "PRUNE_EVERY",
    "READ_PAGE",
    "AgentFactory",
    "OnDisconnect",
    "SessionManager",
    "SessionRequest",
    "StorageFailure",
    "owner_of",
]

OnDisconnect = Literal["grace", "continue", "cancel"]

# How long a new session waits for its first follower before the disconnect policy applies.
ATTACH_WINDOW = 10.0
# A waiting session reports its queue position at most this often (the latest one).
QUEUE_REPORT_INTERVAL = 1.0
# An outcome the store could not take is offered to it again this often.
SETTLE_EVERY = 1.0
# Retry-After when the store cannot create sessions (a full disk, most likely).
STORE_RETRY_AFTER = 10


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


def owner_of(api_key: str | None) -> str | None:
    """Who owns a session: a digest of the client key, never the key itself."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class _LiveSession:
    """A session this process runs: its run, its task, its ticket, its followers."""

    def __init__(self, run: SessionRun, ticket: Ticket) -> None:
        self.id = run.id
        self.run = run
        self.ticket = ticket
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self.grace: asyncio.TimerHandle | None = None
        self.ready = asyncio.Event()  # set once its record exists and its task runs

    @property
    def record(self) -> SessionRecord:
        return self.run.record

    @property
    def cancel_requested(self) -> bool:
        return self.run.cancel_requested

    @property
    def tag(self) -> str:
        return self.run.tag


class SessionManager(StoredSessions):
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        admission: Admission,
        metrics: Metrics,
        agent_factory: AgentFactory,
        *,
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        """``checkpoints``: where runs keep their checkpoints; without a checkpoint
        store nothing is resumed (a restart marks unfinished sessions failed)."""
        self._settings = settings
        self._store = store
        self._admission = admission
        self._metrics = metrics
        self._agent_factory = agent_factory
        self._checkpoints = checkpoints
        self._template = settings.agent_template()
        self._live: dict[str, _LiveSession] = {}
        self._retention = Retention(
            store, days=settings.retention_days, keep=settings.retention_max_sessions
        )
        # Followers read the log; rows this process writes reach them from memory.
        self._local = LocalTail(store)
        self._follower = Follower(self._local, running=self._running, pending=self._pending)
        # Ended sessions whose outcome the store has not taken yet (a full disk): the
        # terminal event and the record's changes, offered again every SETTLE_EVERY.
        self._unsettled: dict[str, tuple[StoredEvent, SessionChanges]] = {}
        self._settler: asyncio.Task[None] | None = None
        self._busy_conversations: set[str] = set()  # a turn is starting or running

    @property
    def resumes(self) -> bool:
        """Whether a restart resumes the sessions the last process left unfinished."""
        return self._settings.resume_on_start and self._checkpoints is not None

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Resume (or settle as interrupted) what a previous process left unfinished,
        prune, start pruning."""
        left = await self._store.unfinished()
        # Those that were running first, then the queue, each oldest first.
        left.sort(key=lambda record: (record.status != "processing", record.created_at))
        for record in left:
            if self.resumes:
                try:
                    await self._resume(record)
                    continue
                except ClientError as exc:  # the queue (or the key's share of it) is full
                    reason = f"interrupted: the server restarted and could not resume it ({exc})"
                except Exception as exc:  # its conversation could not be read
                    log.exception("[session %s] could not be resumed", record.id[:8])
                    reason = (
                        "interrupted: the server restarted and could not resume it "
                        f"({type(exc).__name__})"
                    )
            else:
                reason = f"interrupted: the server stopped while this session was {record.status}"
            await self._mark_interrupted(record, reason)
        await self._retention.prune()
        self._retention.start()

    async def _mark_interrupted(self, record: SessionRecord, reason: str) -> None:
        event = Error(session_id=record.id, content=reason)
        stored = StoredEvent(record.last_seq + 1, event.type, event.model_dump_json())
        changes = SessionChanges(status="failed", ended_at=utc_now(), error=event.content)
        try:
            await self._store.append(record.id, [stored], changes)
        except Exception as exc:  # a full disk must not keep the server from starting
            log.error("[session %s] could not mark it failed: %s", record.id[:8], exc)
            self._unsettle(record.id, stored, changes)
            return
        log.warning("[session %s] interrupted by a restart: marked failed", record.id[:8])
        await self._forget_checkpoint(record.id)

    async def _forget_checkpoint(self, session_id: str) -> None:
        if self._checkpoints is not None:
            try:
                await self._checkpoints.delete(session_id)
            except Exception as exc:
                log.warning("[session %s] checkpoint not deleted: %s", session_id[:8], exc)

    async def _resume(self, record: SessionRecord) -> None:
        """Run an interrupted session again: its log goes on after its last event, from
        its checkpoint if it has one; a fresh grace window for its followers."""
        turns = await self._store.conversation(record.conversation)
        history = tuple(
            Exchange(t.question, t.answer) for t in turns if t.answer and t.turn < record.turn
        )
        ticket = self._admission.admit(record.id, record.owner or "")
        self._busy_conversations.add(record.conversation)
        # The request's own settings (a checkpoint, when there is one, holds them too).
        config = self._template.for_request(**record.generation)
        live = self._live_session(record, ticket, config, history, resume=True)
        self._launch(live)
        log.info("%s resuming after a restart (%s)", live.tag, record.status)

    async def close(self) -> None:
        """Stop pruning and end every live session: handed back (it resumes at the next
        start) when restarts resume, else ``cancelled``."""
        await self._retention.stop()
        live = list(self._live.values())
        if self._settler is not None:
            self._settler.cancel()
        for session in live:
            if not (self.resumes and session.run.hand_back()):
                self._cancel(session, "cancelled: the server is shutting down")
        tasks = [session.task for session in live if session.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

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
        place = await self._place(request.session_id, request.owner)
        session_id = place.session_id
        if session_id in self._live or place.conversation in self._busy_conversations:
            raise SessionConflict(
                busy_message(place.conversation)
                if place.conversation_id is not None
                else f"session {session_id} already exists"
            )
        ticket = self._admission.admit(session_id, request.owner or "")
        self._busy_conversations.add(place.conversation)
        record = place.record(request)
        # Live before its record is written: a DELETE that arrives meanwhile finds it
        # (and waits for it) instead of finding a queued record with nothing behind it.
        live = self._live_session(record, ticket, config, place.history or request.history)
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
        self._launch(live)
        question = request.question if self._settings.log_questions else "(question not logged)"
        log.info("%s admitted (%s): %s", live.tag, ticket.state, question)
        return session_id

    def _live_session(
        self,
        record: SessionRecord,
        ticket: Ticket,
        config: AgentTemplate,
        history: tuple[Exchange, ...],
        *,
        resume: bool = False,
    ) -> _LiveSession:
        live: _LiveSession
        run = SessionRun(
            record,
            store=self._store,
            agent_factory=self._agent_factory,
            config=config,
            history=history,
            checkpoints=self._checkpoints,
            resume=resume,
            metrics=self._metrics,
            on_event=lambda row: self._local.add(record.id, row),
            on_unsettled=self._unsettle,
            # The slot and the conversation are free before a follower can see the
            # terminal event (a follow-up asked meanwhile meets the stored record,
            # still unfinished until the terminal event is written with its status).
            on_stopped=lambda: self._stopped(live),
        )
        live = _LiveSession(run, ticket)
        return live

    def _launch(self, live: _LiveSession) -> None:
        """Start its task and its first grace window."""
        self._live[live.id] = live
        self._local.open(live.id)
        live.task = asyncio.create_task(self._drive(live), name=f"session-{live.id}")
        live.task.add_done_callback(lambda _: self._task_done(live))
        live.ready.set()
        if live.record.on_disconnect != "continue":
            live.grace = asyncio.get_running_loop().call_later(
                max(ATTACH_WINDOW, self._settings.disconnect_grace), self._unwatched, live
            )

    def _stopped(self, live: _LiveSession) -> None:
        self._admission.release(live.ticket)
        self._busy_conversations.discard(live.record.conversation)

    def _wait_turn(self, live: _LiveSession) -> WaitTurn:
        def wait() -> AsyncIterator[int]:
            return self._admission.wait_turn(
                live.ticket, self._settings.queue_timeout, QUEUE_REPORT_INTERVAL
            )

        return wait

    async def _drive(self, live: _LiveSession) -> None:
        try:
            outcome = await live.run.run(self._wait_turn(live))
        finally:
            self._admission.release(live.ticket)
            if live.grace is not None:
                live.grace.cancel()
            self._live.pop(live.id, None)
            self._local.close(live.id)
        self._account(live, outcome)

    def _account(self, live: _LiveSession, outcome: RunOutcome) -> None:
        ran = outcome.run_seconds
        if ran is not None:
            self._metrics.queue_wait.observe(outcome.queue_wait)
            self._metrics.run_time.observe(ran)
            self._admission.record_run(ran)
        run = f"{ran:.2f} s" if ran is not None else "never ran"
        if outcome.status is None:
            what = "handed back" if outcome.handed_back else "stopped"
            log.info("%s %s; run %s; slot released", live.tag, what, run)
            return
        self._metrics.sessions.labels(outcome=outcome.status).inc()
        log.info(
            "%s %s; queue wait %.2f s, run %s; slot released",
            live.tag,
            outcome.status,
            outcome.queue_wait,
            run,
        )

    def _task_done(self, live: _LiveSession) -> None:
        """Whatever happened to the task, its ticket goes back."""
        self._admission.release(live.ticket)
        self._busy_conversations.discard(live.record.conversation)
        self._live.pop(live.id, None)
        self._local.close(live.id)

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
        if live.run.finishing is not None:
            await asyncio.wait([live.run.finishing])
        return await self.get(session_id, owner)

    def _cancel(self, live: _LiveSession, reason: str) -> None:
        # Once: a second cancel (or one while the outcome is being written) must not
        # interrupt the writing of the terminal event.
        live.run.cancel(reason)

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
        sends a heartbeat then). While someone follows a live session its
        disconnect policy waits.
        """
        live = self._live.get(session_id)
        if live is not None:
            self._attach(live)
        try:
            async for out in self._follower.follow(session_id, after, idle, deltas=deltas):
                yield out
        finally:
            if live is not None:
                self._detach(live)

    async def _running(self, session_id: str) -> bool:
        return session_id in self._live

    def _pending(self, session_id: str) -> StoredEvent | None:
        """A terminal event decided but not (yet) stored."""
        pending = self._unsettled.get(session_id)
        return pending[0] if pending is not None else None

    def _attach(self, live: _LiveSession) -> None:
        live.followers += 1
        if live.grace is not None:
            live.grace.cancel()
            live.grace = None

    def _detach(self, live: _LiveSession) -> None:
        live.followers -= 1
        if live.followers or live.id not in self._live:
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
        if not live.followers and live.id in self._live:
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
            await self._forget_checkpoint(session_id)
