"""Running one session whose record exists: the agent, its numbered events, its end.

``SessionRun`` is what both modes run: the single-process ``SessionManager`` around
it (admission, grace timers, cancel) and a distributed worker (whose job queue is
its admission). One run:

- appends each event under the next sequence number, streamed text through the
  ``Compactor``, every write fenced by the lease token when there is one
  (``store.append(..., lease=token)``);
- waits for its turn only if it is given a ``wait_turn`` step (each position it
  yields is announced as ``queued``);
- saves a checkpoint after each completed round (when it has a checkpoint store and
  the agent keeps them), and goes on from the last one when it resumes;
- ends with exactly one terminal event, written with the final status in one
  append, on every path: the agent's end, cancel, time limit, a storage failure,
  an agent error. Two paths end it without writing anything: a *hand back* (the
  process is shutting down; the session is run again elsewhere from its
  checkpoint) and a *lost lease* (another worker runs it now).

Coalescing: streamed text (``thinking`` / ``final_answer_chunk`` delta rows, one
every ~50 ms while the model streams) is held and stored with the rows after it,
so a session makes about one append a second instead of twenty. Held rows are
stored, in one append and in order:

- with the next event of any other kind (it goes last in that append);
- once the first of them is ``coalesce`` seconds old (``COALESCE_WINDOW``), by a
  timer when no other event comes;
- at once when a row starts a text (the first text of a round, or a reply asked
  again): a follower sees a round's first text without waiting;
- before a checkpoint (which names the last stored number) and with the terminal
  event (cancel included: the text produced so far is kept).

A run handed back, or one that lost its lease, drops its held text: the round is
streamed again by the run that goes on from the checkpoint. Numbers are taken only
once stored; a failed write stores none of the rows held (one append is all or
nothing) and ends the session with one ``error``; a timed write that fails is
raised by the run's next write or at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from deepresearch.agent.base import Agent, AgentState
from deepresearch.agent.conversation import Exchange
from deepresearch.config import AgentTemplate
from deepresearch.errors import LeaseLost, SessionFailure
from deepresearch.events import (
    TERMINAL_TYPES,
    Cancelled,
    Error,
    Event,
    FinalAnswer,
    Init,
    Queued,
    Resumed,
    SessionStart,
    Timeout,
    utc_now,
)
from deepresearch.runtime.admission import QueueTimeout
from deepresearch.runtime.deltas import ACCUMULATED, Compactor, since_of
from deepresearch.runtime.metrics import Metrics
from deepresearch.sessions.checkpoints import Checkpoint, CheckpointStore
from deepresearch.sessions.records import (
    STATUS_BY_TERMINAL_EVENT,
    UNFINISHED,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)
from deepresearch.sessions.store import SessionStore

log = logging.getLogger("deepresearch.sessions")

# Streamed text is held at most this long before it is stored (seconds): the wire
# sends accumulated text about once a second anyway (``runtime/deltas.py``).
COALESCE_WINDOW = 1.0

# (session_id, config, **keywords) -> Agent. Keywords, each only when used:
# ``history`` (a follow-up's earlier turns), ``on_round`` (the checkpoint hook),
# ``checkpoint`` (an ``AgentState`` to go on from).
AgentFactory = Callable[..., Agent]
# Waits for a slot, yielding queue positions meanwhile; ``QueueTimeout`` if none comes.
WaitTurn = Callable[[], AsyncIterator[int]]
# Told about a terminal event the store did not take (a full disk), to offer it again.
Unsettled = Callable[[str, StoredEvent, SessionChanges], None]
# Asked when the run is cancelled by someone who did not say why (a job queue): a
# reason (the session ends ``cancelled`` with it) or None (hand it back, write nothing).
WhyCancelled = Callable[[], Awaitable[str | None]]


class StorageFailure(SessionFailure):
    """The session store could not save one of this session's events."""


class _Abandoned(Exception):
    """The run stops without writing anything more: the session is not there to run
    (``status``: how it ended, None if it is gone)."""

    def __init__(self, message: str, status: SessionStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended.

    ``terminal`` is None when nothing terminal was written: ``handed_back`` (a
    shutdown: run it again elsewhere, from its checkpoint) or ``lease_lost``
    (another runner has it) or, resuming, the session was not unfinished
    (``status``: how it had ended; None: it is gone).
    """

    terminal: StoredEvent | None
    status: SessionStatus | None
    stored: bool = False  # the terminal event is in the store (else: given to on_unsettled)
    handed_back: bool = False
    lease_lost: bool = False
    queue_wait: float = 0.0  # seconds from the start of ``run`` to the slot
    run_seconds: float | None = None  # from the slot to the end; None: the agent never ran
    resumed_from: int | None = None  # the checkpoint's round when it resumed (0: none)


class SessionRun:
    """One run of one session (see the module's docstring).

    ``run()`` is awaited in the task that runs the session; ``cancel(reason)`` and
    ``hand_back()`` may be called from anywhere (before ``run`` starts, too).
    """

    def __init__(
        self,
        record: SessionRecord,
        *,
        store: SessionStore,
        agent_factory: AgentFactory,
        config: AgentTemplate,
        history: tuple[Exchange, ...] = (),
        checkpoints: CheckpointStore | None = None,
        lease: str | None = None,
        lease_lost: asyncio.Event | None = None,
        resume: bool = False,
        metrics: Metrics | None = None,
        on_event: Callable[[StoredEvent], None] | None = None,
        on_unsettled: Unsettled | None = None,
        why_cancelled: WhyCancelled | None = None,
        on_stopped: Callable[[], None] | None = None,
        coalesce: float = COALESCE_WINDOW,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.record = record
        self.id = record.id
        self._store = store
        self._factory = agent_factory
        self._config = config
        self._history = history
        self._checkpoints = checkpoints
        self._lease = lease
        self._lease_lost = lease_lost
        self._resume = resume
        self._metrics = metrics
        self._on_event = on_event
        self._on_unsettled = on_unsettled
        self._why_cancelled = why_cancelled
        self._on_stopped = on_stopped
        self.seq = 0  # the last sequence number stored
        self.compactor = Compactor()  # streamed text is stored as deltas
        self.appends = 0  # writes of events made (each one or more rows)
        self._window = coalesce
        self._clock = clock or time.monotonic
        self._lock = asyncio.Lock()  # one write at a time: numbers follow the store
        self._held: list[StoredEvent] = []  # rows prepared, not yet stored
        self._held_since = 0.0  # when the first of them was
        self._timer: asyncio.Task[None] | None = None  # stores them when window old
        self._failure: StorageFailure | LeaseLost | None = None  # of a timed write
        self.terminal: StoredEvent | None = None  # once decided, stored or not
        self.finishing: asyncio.Future[None] | None = None  # writing the terminal event
        self.cancel_requested = False
        self.cancel_reason = "cancelled"
        self.checkpoint_round = 0  # the round of the last checkpoint saved
        self._checkpointed = False  # a checkpoint of this session may exist
        self._terminal_stored = False
        self._handing_back = False
        self._abandoning = False
        self._ending = False  # the agent has stopped: the outcome is being decided
        self._task: asyncio.Task[Any] | None = None

    @property
    def tag(self) -> str:
        return f"[session {self.id[:8]}]"

    # -- asked from outside -------------------------------------------------------------------

    def cancel(self, reason: str) -> bool:
        """End the session ``cancelled`` with ``reason``. False (nothing done) once it
        has been asked already or its outcome is being decided or written."""
        if self.cancel_requested or self._handing_back or self._ending:
            return False
        self.cancel_requested = True
        self.cancel_reason = reason
        if self._task is not None:
            self._task.cancel()
        return True

    def hand_back(self) -> bool:
        """Stop without a terminal event (a shutdown): the checkpoint stays, the
        session is run again later. False once it is ending anyway."""
        if self.cancel_requested or self._handing_back or self._ending:
            return False
        self._handing_back = True
        if self._task is not None:
            self._task.cancel()
        return True

    # -- writing ------------------------------------------------------------------------------

    async def emit(self, event: Event, changes: SessionChanges | None = None) -> None:
        """Store ``event`` as the next number (with ``changes`` to the record).

        Streamed text (``thinking``, ``final_answer_chunk``) is held back and stored
        with the rows after it (see "Coalescing" in the module's docstring); any
        other event is stored at once, after the text held before it, in one append.
        """
        async with self._lock:
            self._raise_failure()
            # Numbers are taken only once the rows are stored (``_flush``): a failed
            # write leaves no gap, and the session ends (StorageFailure) with the
            # next number. Streamed text is stored as deltas against the rows before
            # it: the compactor moves on only with the store (a failed write moves
            # neither).
            seq = self.seq + len(self._held) + 1
            row = self.compactor.row(seq, event)
            now = self._clock()
            if not self._held:
                self._held_since = now
            self._held.append(row)
            # The first text of a round (or a text asked again) is not held, so a
            # follower sees it at once; nor is text once held for the whole window.
            if (
                event.type in ACCUMULATED
                and changes is None
                and since_of(row) != seq
                and now - self._held_since < self._window
            ):
                self._flush_later()
                return
            await self._flush(changes)

    async def _flush(self, changes: SessionChanges | None = None) -> None:
        """Store the rows held, in one append (the lock held)."""
        rows = self._held
        if not rows:
            return
        try:
            await self._store.append(self.id, rows, changes, lease=self._lease)
        except asyncio.CancelledError:
            self._stored_rows(rows, announce=False)  # the write goes on without us and
            raise  # may land: never reuse its numbers
        except LeaseLost:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            log.error("%s the store could not save a %s event: %s", self.tag, rows[-1].type, exc)
            raise StorageFailure(
                f"the session store could not save this session's events ({exc})"
            ) from exc
        self._stored_rows(rows)

    def _stored_rows(self, rows: list[StoredEvent], *, announce: bool = True) -> None:
        self.seq += len(rows)
        self.compactor.commit()
        self._held = []
        self.appends += 1
        if announce:
            for row in rows:
                self._stored(row)

    def _drop(self) -> None:
        """Forget the rows held (never stored): the compactor goes back to the store."""
        self._held = []
        self.compactor.rollback()

    def _flush_later(self) -> None:
        """Make sure held text is stored once it is ``window`` old, even if no other
        event comes (the model is silent, a tool runs)."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._timed(), name=f"coalesce {self.id}")

    async def _timed(self) -> None:
        try:
            while self._held and self._failure is None:
                wait = self._held_since + self._window - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with self._lock:
                    if self._held and self._clock() - self._held_since >= self._window:
                        await self._flush()
        except (StorageFailure, LeaseLost) as exc:
            # Nothing of it was stored; the run's next write (or its end) raises it.
            self._failure = exc
        finally:
            self._timer = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _settle(self) -> None:
        """The run is over: no timed write is under way or will be. Waits for one
        under way even if asked to stop again meanwhile (the run is ending anyway)."""
        if self._timer is None:
            return
        stopping = asyncio.ensure_future(self._stop_timer())
        while not stopping.done():
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                while task is not None and task.cancelling():
                    task.uncancel()

    async def _stop_timer(self) -> None:
        async with self._lock:  # not while it writes
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _stored(self, stored: StoredEvent) -> None:
        if self._metrics is not None:
            self._metrics.events.inc()
        if self._on_event is not None:
            self._on_event(stored)

    async def _save(self, state: AgentState) -> None:
        """The agent's hook after each completed round: keep it as the checkpoint."""
        assert self._checkpoints is not None
        async with self._lock:
            # The checkpoint names the last stored number: the rows before it first.
            self._raise_failure()
            await self._flush()
            await self._save_checkpoint(state)

    async def _save_checkpoint(self, state: AgentState) -> None:
        assert self._checkpoints is not None
        checkpoint = Checkpoint(
            session_id=self.id,
            round=state.round,
            last_seq=self.seq,
            messages=state.messages,
            counters=state.counters,
            extra=state.extra,
        )
        try:
            await self._checkpoints.save(checkpoint, lease=self._lease)
        except LeaseLost:
            raise
        except Exception as exc:  # the run goes on; a resume would start further back
            log.warning("%s checkpoint after round %d not saved: %s", self.tag, state.round, exc)
            self._checkpointed = True  # perhaps it was, after all
            return
        self.checkpoint_round = state.round
        self._checkpointed = True

    # -- running ------------------------------------------------------------------------------

    async def _load(self) -> Checkpoint | None:
        """Resuming: the record as stored (where its log goes on) and its checkpoint.
        ``_Abandoned`` when it is not unfinished; a store error is raised as it is."""
        current = await self._store.get(self.id)
        if current is None:
            raise _Abandoned("it is gone")
        if current.status not in UNFINISHED:
            raise _Abandoned(f"it is {current.status}", current.status)
        self.record = current
        self.seq = current.last_seq
        if self.seq == 0:  # never started: this is its first run after all
            self._resume = False
            return None
        checkpoint = await self._checkpoints.load(self.id) if self._checkpoints else None
        self.checkpoint_round = checkpoint.round if checkpoint is not None else 0
        self._checkpointed = checkpoint is not None
        return checkpoint

    async def _begin(self) -> None:
        """The first event: ``session_start``; or, going on after the log's last one,
        ``resumed`` when an earlier run took a slot (the record has ``started_at``) or
        left a checkpoint; a session that only waited so far (its log: ``session_start``,
        perhaps ``queued``, written here or by the API node that queued it) goes
        straight on."""
        sid = self.id
        if not self._resume:
            await self.emit(
                SessionStart(session_id=sid, question=self.record.question, content=sid)
            )
            return
        if self.record.started_at is None and not self._checkpointed:
            return
        done = self.checkpoint_round
        where = f"after round {done}" if done else "from its first round"
        await self.emit(Resumed(session_id=sid, round=done, content=f"resumed {where}"))
        log.info("%s resumed %s", self.tag, where)

    def _agent(self, checkpoint: Checkpoint | None) -> Agent:
        keywords: dict[str, Any] = {}
        if self._history:
            keywords["history"] = self._history
        if self._checkpoints is not None:
            keywords["on_round"] = self._save
        if checkpoint is not None:
            keywords["checkpoint"] = AgentState(
                round=checkpoint.round,
                messages=checkpoint.messages,
                counters=checkpoint.counters,
                extra=checkpoint.extra,
            )
        return self._factory(self.id, self._config, **keywords)

    async def run(self, wait_turn: WaitTurn | None = None) -> RunOutcome:
        """Run the session to its end (see ``RunOutcome``). Raises ``CancelledError``
        only when cancelled from outside and ``why_cancelled`` said to hand it back;
        and, resuming, the store's error when the record cannot be read (nothing
        written: try again later)."""
        self._task = asyncio.current_task()
        sid = self.id
        loop = asyncio.get_running_loop()
        admitted = loop.time()
        checkpoint: Checkpoint | None = None
        if self._resume:
            try:
                checkpoint = await self._load()
            except BaseException as exc:
                if self._on_stopped is not None:
                    self._on_stopped()
                if not isinstance(exc, _Abandoned):
                    raise
                log.warning("%s not resumed: %s", self.tag, exc)
                return RunOutcome(None, exc.status)
        started: float | None = None
        final: FinalAnswer | None = None
        resumed_from: int | None = None
        terminal: Event = Error(session_id=sid, content="the agent stopped without an outcome")
        raw_cancel = False
        watcher = self._watch_lease()
        try:
            await self._begin()
            resumed_from = self.checkpoint_round if self._resume else None
            if self.cancel_requested or self._handing_back:
                raise asyncio.CancelledError  # asked before the run took its first step
            if wait_turn is not None:
                async for position in wait_turn():
                    await self.emit(
                        Queued(
                            session_id=sid,
                            position=position,
                            content=f"waiting for a free slot: position {position}",
                        )
                    )
            started = loop.time()
            if wait_turn is not None:
                log.info("%s acquired slot after %.2f s in the queue", self.tag, started - admitted)
            first = self.record.started_at is None
            await self.emit(
                Init(session_id=sid, content="slot acquired; agent ready"),
                SessionChanges(status="processing", started_at=utc_now() if first else None),
            )
            agent = self._agent(checkpoint)
            async with (
                asyncio.timeout(self._config.max_run_seconds),
                # Closed on every way out, so the agent's model call is aborted at once.
                aclosing(agent.run(self.record.question)) as events,
            ):
                async for event in events:
                    if event.type in TERMINAL_TYPES:
                        terminal = event
                        break
                    if isinstance(event, FinalAnswer):
                        final = event
                    await self.emit(event)
        except QueueTimeout as exc:
            terminal = Timeout(session_id=sid, content=f"timeout: {exc}")
        except TimeoutError:
            terminal = Timeout(
                session_id=sid,
                content=f"timeout: the research ran past {self._config.max_run_seconds:g} s",
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            while task is not None and task.cancelling():
                task.uncancel()
            if not (self.cancel_requested or self._handing_back or self._abandoning):
                raw_cancel = True
                reason = await self._why_cancelled() if self._why_cancelled else "cancelled"
                if reason is None:
                    self._handing_back = True
                else:
                    self.cancel_requested, self.cancel_reason = True, reason
            terminal = Cancelled(session_id=sid, content=self.cancel_reason)
        except LeaseLost as exc:
            log.warning("%s stopped without writing more: %s", self.tag, exc)
            self._abandoning = True
        except SessionFailure as exc:
            terminal = Error(session_id=sid, content=str(exc))
        except Exception as exc:
            log.exception("%s failed unexpectedly", self.tag)
            terminal = Error(session_id=sid, content=f"internal error: {type(exc).__name__}")
        finally:
            self._ending = True  # its outcome is decided: cancel and hand_back refuse
            if watcher is not None:
                watcher.cancel()
            if self._on_stopped is not None:
                self._on_stopped()  # e.g. free the slot before the end is announced
        ran = loop.time() - started if started is not None else None
        waited = (started if started is not None else loop.time()) - admitted
        await self._settle()
        failure = self._failure
        if failure is not None and not (self._abandoning or self._handing_back):
            if isinstance(failure, LeaseLost):  # a timed write was refused
                log.warning("%s stopped without writing more: %s", self.tag, failure)
                self._abandoning = True
            else:
                terminal = Error(session_id=sid, content=str(failure))
        if self._abandoning or self._handing_back:
            # Text held is dropped: a lost lease may not write it, and a run handed
            # back goes on from its checkpoint, streaming that round again.
            self._drop()
            if self._handing_back:
                log.info("%s handed back at round %d", self.tag, self.checkpoint_round)
            outcome = RunOutcome(
                None,
                None,
                handed_back=self._handing_back,
                lease_lost=self._abandoning,
                queue_wait=waited,
                run_seconds=ran,
                resumed_from=resumed_from,
            )
            if raw_cancel:
                raise asyncio.CancelledError
            return outcome
        self.finishing = asyncio.ensure_future(self._finish(terminal, final))
        await asyncio.shield(self.finishing)
        assert self.terminal is not None
        return RunOutcome(
            self.terminal,
            STATUS_BY_TERMINAL_EVENT[self.terminal.type],
            stored=self._terminal_stored,
            queue_wait=waited,
            run_seconds=ran,
            resumed_from=resumed_from,
        )

    def _watch_lease(self) -> asyncio.Task[None] | None:
        lost = self._lease_lost
        if lost is None:
            return None

        async def watch() -> None:
            await lost.wait()
            if self.finishing is None and not self._abandoning:
                log.warning("%s lease lost: stopping", self.tag)
                self._abandoning = True
                if self._task is not None:
                    self._task.cancel()

        return asyncio.create_task(watch(), name=f"lease watch {self.id}")

    async def _finish(self, terminal: Event, final: FinalAnswer | None) -> None:
        """The terminal event and the record's final state, in one append."""
        status = STATUS_BY_TERMINAL_EVENT[terminal.type]
        changes = SessionChanges(
            status=status,
            ended_at=utc_now(),
            answer=final.answer_data.answer if final else None,
            citations=[c.model_dump() for c in final.answer_data.citations] if final else None,
            error=terminal.content if status != "completed" else None,
        )
        held = self._held  # text held comes first, in the same append
        stored = StoredEvent(self.seq + len(held) + 1, terminal.type, terminal.model_dump_json())
        self.terminal = stored
        try:
            await self._store.append(self.id, [*held, stored], changes, lease=self._lease)
        except LeaseLost as exc:
            log.warning("%s outcome not written, the lease is lost: %s", self.tag, exc)
            self._drop()
            return
        except Exception as exc:
            # Its followers still get the terminal event, and the record reads as
            # ended; the store is offered the outcome again until it takes it. The
            # text held is let go: the terminal event takes the next stored number.
            log.error("%s outcome not stored (%s); will retry", self.tag, exc)
            self._drop()
            self.seq += 1
            stored = self.terminal = StoredEvent(self.seq, stored.type, stored.data)
            if self._on_unsettled is not None:
                self._on_unsettled(self.id, stored, changes)
            return
        self._held = []
        self.seq = stored.seq
        self.compactor.commit()
        self.appends += 1
        for row in held:
            self._stored(row)
        self._terminal_stored = True
        if self._checkpoints is not None and self._checkpointed:
            with contextlib.suppress(Exception):  # an orphan checkpoint only costs room
                await self._checkpoints.delete(self.id)
        # Announced last: what a follower does next (a follow-up question) finds the
        # run over, not still tidying up.
        self._stored(stored)
