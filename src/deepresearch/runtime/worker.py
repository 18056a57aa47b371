"""``deepresearch worker``: runs the sessions API nodes enqueue (distributed mode).

A saq ``Worker`` takes jobs from the cluster's queue, at most
``DEEPRESEARCH_MAX_CONCURRENT`` at once (``auto``: the adaptive limit's slots, which
gate dequeuing). Each job is one session:

1. take the session's lease, waiting at most one TTL for it (a dead worker's lapses
   by then; a node holds it only for a moment). If it is still held after that, a
   live worker runs the session (at-least-once delivered the job twice): give up.
2. read the record: a session that has already ended (cancelled while queued, say)
   needs nothing; one whose cancel was asked meanwhile ends ``cancelled``.
3. run it with the runner (``runtime/runner.py``), every write fenced by the lease
   token. The first run goes on from the node's ``session_start`` (and any
   ``queued`` events); a later one (its worker died, or handed it back) appends
   ``resumed`` and continues from the last checkpoint.
4. one beat task, every ``heartbeat / 4`` s: renews the lease (and tells the runner
   when it is lost: the run stops without writing), touches saq's job (its
   heartbeat: a job not touched for ``heartbeat`` s is swept and re-queued),
   reads the session's cancel key (a cancel asked on any node) and its watch key
   (``on_disconnect`` across nodes, see ``runtime/dispatch.py``).

Cancelled from outside without a reason (saq cancelling the task on shutdown): the
runner asks ``why_cancelled``; with no cancel key the session is *handed back*:
nothing terminal is written, the lease is released, saq re-queues the job and the
next attempt resumes from the checkpoint. SIGTERM: saq stops dequeuing; running
sessions get ``DEEPRESEARCH_SHUTDOWN_GRACE`` seconds to finish, then are handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from saq import Worker
from saq.job import Job

from deepresearch.agent.conversation import Exchange
from deepresearch.config import Settings
from deepresearch.errors import LeaseLost, SessionFailure
from deepresearch.events import Cancelled
from deepresearch.runtime.dispatch import (
    ATTACH_WINDOW,
    HELD_ELSEWHERE,
    QUEUE_FUNCTION,
    Cluster,
    DistributedSessions,
    node_name,
    shutdown_grace,
    slots_for,
    take_lease,
)
from deepresearch.runtime.runner import SessionRun
from deepresearch.services import Services, open_services
from deepresearch.sessions.records import UNFINISHED, SessionRecord
from deepresearch.sessions.redis_workers import WorkerInfo

log = logging.getLogger("deepresearch.worker")

# How often the worker tells the cluster it is alive (its slots, its sessions).
WORKER_BEAT = 2.0
# A dequeued job that has not started after this long (its start failed) stops counting.
CLAIM_SECONDS = 10.0
# While every slot is busy (``auto``), the adaptive limit is looked at again this often.
SLOT_POLL = 0.25


class SessionWorker:
    """One worker process: a saq ``Worker`` plus its beats."""

    def __init__(self, services: Services) -> None:
        assert services.cluster is not None and isinstance(services.manager, DistributedSessions)
        self._services = services
        self._settings: Settings = services.settings
        self._cluster: Cluster = services.cluster
        self._sessions: DistributedSessions = services.manager
        self.name = node_name()
        self._started_at = datetime.now(UTC)
        self._running: dict[str, SessionRun] = {}
        self._dequeuing = 0
        self._claimed: dict[str, float] = {}  # dequeued, not started yet: key -> when
        self._room = asyncio.Event()
        timings = self._cluster.timings
        if self._settings.adaptive:
            self._cluster.queue.gate = self._slot_free
        self.saq: Worker[Any] = Worker(
            self._cluster.queue,
            functions=[(QUEUE_FUNCTION, self._job)],
            id=self.name,
            concurrency=slots_for(self._settings),
            # (saq waits out its upkeep loops at shutdown: none sleeps longer than the sweep)
            timers={
                "sweep": timings.sweep,
                "abort": 1,
                "schedule": 1,
                "worker_info": timings.sweep,
            },
            # Idle dequeues return this often, so a SIGTERM stops them at once.
            dequeue_timeout=1.0,
            shutdown_grace_period_s=shutdown_grace(self._settings),
            cancellation_hard_deadline_s=5.0,
        )

    @property
    def slots(self) -> int:
        if isinstance(self._settings.max_concurrent, int):
            return self._settings.max_concurrent
        return self._services.admission.max_concurrent  # the adaptive limit's slots

    def _taken(self) -> int:
        """Sessions this worker has taken: running, dequeued and about to start (a
        job between saq's dequeue and its start; forgotten after CLAIM_SECONDS if it
        never starts), and dequeues under way."""
        started = {job.key for job in self.saq.job_task_contexts}
        now = asyncio.get_running_loop().time()
        for key, at in list(self._claimed.items()):
            if key in started or now - at > CLAIM_SECONDS:
                del self._claimed[key]
        return len(started) + len(self._claimed) + self._dequeuing

    @contextlib.asynccontextmanager
    async def _slot_free(self) -> AsyncIterator[Callable[[str], None]]:
        """Around each dequeue with ``auto``: wait until the adaptive limit has room
        for one more beside what this worker has taken."""
        while self._taken() >= self.slots:
            # A session ending sets it; the limit growing is seen at the next look.
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), SLOT_POLL)
        self._dequeuing += 1

        def took(key: str) -> None:
            self._claimed[key] = asyncio.get_running_loop().time()

        try:
            yield took
        finally:
            self._dequeuing -= 1

    async def run(self) -> None:
        """Work until SIGTERM (or SIGINT), then hand back what did not finish in time."""
        beating = asyncio.create_task(self._beat_forever(), name="worker beat")
        log.info(
            "worker %s: %d slots, recovery %g s (heartbeat %d s, sweep %d s)",
            self.name,
            self.slots,
            self._cluster.timings.recovery,
            self._cluster.timings.heartbeat,
            self._cluster.timings.sweep,
        )
        try:
            await self.saq.start()
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._cluster.workers.leave(self.name)
            log.info("worker %s stopped", self.name)

    async def _beat_forever(self) -> None:
        index = self._services.index_state
        sandbox = self._services.sandbox
        model = self._services.model
        while True:
            info = WorkerInfo(
                name=self.name,
                slots=self.slots,
                running=len(self._running),
                started_at=self._started_at,
                beat_at=datetime.now(UTC),
                documents=index.documents,
                index_building=index.building,
                index_error=index.error,
                code_execution=sandbox.available is True,
                code_execution_reason=sandbox.reason or None,
                llm=tuple(model.states()) if model is not None else (),
            )
            try:
                await self._cluster.workers.beat(info, ttl=3 * WORKER_BEAT)
            except Exception as exc:
                log.warning("worker beat failed: %s", exc)
            await asyncio.sleep(WORKER_BEAT)

    # -- one job: one session -----------------------------------------------------------------

    async def _job(
        self,
        ctx: dict[str, Any],
        *,
        session_id: str,
        generation: dict[str, float | int | None] | None = None,
        history: list[list[str]] | None = None,
    ) -> str:
        job: Job = ctx["job"]
        cluster = self._cluster
        sid = session_id
        tag = f"[session {sid[:8]}]"
        token = f"{self.name}:{uuid.uuid4().hex[:12]}"
        if not await take_lease(cluster.leases, sid, token, cluster.timings.lease_ttl):
            log.warning("%s another worker holds it and keeps it alive: not run twice", tag)
            return HELD_ELSEWHERE
        lost = asyncio.Event()
        try:
            record = await cluster.store.get(sid)
            if record is None or record.status not in UNFINISHED:
                return "ended"
            reason = await cluster.cancel_reason(sid)
            if reason is not None:
                await cluster.end_leased(sid, Cancelled(session_id=sid, content=reason), token)
                return "cancelled"
            # The record keeps the request's settings (a job enqueued by an older node
            # carries them alone).
            chosen = {**(generation or {}), **record.generation}
            config = self._settings.agent_template().for_request(**chosen)
            assert self._services.agent_factory is not None

            async def why_cancelled() -> str | None:
                with contextlib.suppress(Exception):
                    return await cluster.cancel_reason(sid)
                return None

            run = SessionRun(
                record,
                store=cluster.store,
                agent_factory=self._services.agent_factory,
                config=config,
                history=tuple(Exchange(q, a) for q, a in history or ()),
                checkpoints=cluster.checkpoints,
                lease=token,
                lease_lost=lost,
                resume=True,
                metrics=self._services.metrics,
                why_cancelled=why_cancelled,
            )
            self._running[sid] = run
            self._sessions.running_owners[sid] = record.owner
            beat = asyncio.create_task(
                self._beat(job, run, record, token, lost), name=f"beat {sid}"
            )
            try:
                outcome = await run.run()
            finally:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
                self._running.pop(sid, None)
                self._sessions.running_owners.pop(sid, None)
                self._room.set()
            if outcome.lease_lost:
                return await self._after_lost_lease(sid)
            if outcome.terminal is not None and not outcome.stored:
                # Redis did not take the end (it is away): saq retries the job (its
                # sweep does, once Redis is back) and the session resumes from its
                # checkpoint, rather than staying ``processing`` with no job behind it.
                raise SessionFailure(f"session {sid}: its outcome could not be stored")
            return outcome.status or "handed back"
        finally:
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    await cluster.leases.release(sid, token)

    async def _after_lost_lease(self, sid: str) -> str:
        """The run stopped because its lease was lost. If another worker holds it now,
        that one runs the session (and owns its job: ``HELD_ELSEWHERE``). If nobody
        does (the lease lapsed while Redis was unreachable), raise: saq then retries
        the job (or, if Redis is still away, its sweep re-queues it later) and the
        session resumes from its checkpoint instead of staying ``processing`` with no
        job behind it."""
        cluster = self._cluster
        record = await cluster.store.get(sid)
        if record is None or record.status not in UNFINISHED:
            return "ended"
        if await cluster.leases.holder(sid) is None:
            raise LeaseLost(f"session {sid}: lease lapsed with nobody holding it; run it again")
        return HELD_ELSEWHERE

    async def _beat(
        self, job: Job, run: SessionRun, record: SessionRecord, token: str, lost: asyncio.Event
    ) -> None:
        """The session's one beat: lease, saq's heartbeat, cancel and watch keys."""
        cluster = self._cluster
        sid = record.id
        ttl = cluster.timings.lease_ttl
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        policy = record.on_disconnect
        grace = self._settings.disconnect_grace
        watched_at = loop.time()  # the run's start counts as watched...
        ever_watched = False  # ...with ATTACH_WINDOW for a first follower to arrive
        while True:
            await asyncio.sleep(cluster.timings.beat)
            try:
                renewed = await cluster.leases.renew(sid, token, ttl)
            except Exception as exc:  # Redis unreachable: keep trying until the TTL is up
                log.warning("[session %s] lease renewal failed: %s", sid[:8], exc)
                if loop.time() - last_renewed < ttl:
                    continue
                renewed = False
            if not renewed:
                log.warning("[session %s] lease lost", sid[:8])
                lost.set()
                return
            last_renewed = loop.time()
            try:
                await job.update()  # saq's heartbeat
                reason = await cluster.cancel_reason(sid)
                if reason is not None:
                    run.cancel(reason)
                    continue
                if policy == "continue":
                    continue
                if await cluster.watched(sid):
                    watched_at, ever_watched = loop.time(), True
                    continue
                if policy == "cancel":
                    limit = 0.0 if ever_watched else ATTACH_WINDOW
                    why = "cancelled: the client disconnected"
                else:
                    limit = grace if ever_watched else max(ATTACH_WINDOW, grace)
                    why = "cancelled: no client followed the session"
                if loop.time() - watched_at > limit:
                    log.info("[session %s] %s", sid[:8], why)
                    run.cancel(why)
            except Exception as exc:
                log.warning("[session %s] beat: %s", sid[:8], exc)


async def run_worker(settings: Settings) -> int:
    """``deepresearch worker``: open the services and work until told to stop."""
    if not settings.distributed:
        from deepresearch.errors import ConfigurationError

        raise ConfigurationError(
            "DEEPRESEARCH_REDIS_URL: a worker takes its sessions from Redis; set it"
        )
    async with open_services(settings, role="worker") as services:
        await SessionWorker(services).run()
    return 0
