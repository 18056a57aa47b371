"""Distributed mode, the API node's side: admit, enqueue, stream, cancel.

With ``DEEPRESEARCH_REDIS_URL`` set, ``deepresearch serve`` runs no sessions itself.
``DistributedSessions`` stands where the local ``SessionManager`` stands (the routes
call the same methods): it creates the record and its ``session_start``, enqueues a
saq job keyed by the session id, and serves any session's events from Redis, live
or replayed, whichever node or worker wrote them. ``deepresearch worker``
(``runtime/worker.py``) runs the jobs.

Who writes a session's events, and when (the event log is sequence-checked, so two
writers must never pick the same number):

- the node that admits it writes ``session_start`` before enqueueing: no one else
  knows of the session yet;
- from then on every write is made under the session's **lease**: a worker holds it
  for as long as it runs the session; a node takes it for a moment (``NODE_LEASE``
  seconds, released at once) to write a ``queued`` position or to end a session
  nobody runs (cancelled while queued, or while its worker was dead). A worker
  that finds the lease briefly held waits for it; a node that finds it held leaves
  the writing to the holder.

Queue positions are the fair order over saq's queued list (``PLAN``: workers take
jobs by ``TAKE``, the same rule: the key with the fewest running first, FIFO within
a key), read once a second by the node
that admitted the session, and written as ``queued`` events under the lease while
the session's record still says ``queued``; once a worker has the lease, no
position can follow its ``init``.

Cancelling from any node: ``p:cancel:<id>`` records the reason (a worker checks
it at start and at every beat), then saq's ``abort`` (a running job's task is
cancelled within ``timers["abort"]``; a queued one leaves the queue). If nobody
holds the lease the node writes the terminal ``cancelled`` itself; otherwise it
waits (a blocking read of the log) for the holder's terminal event.

Clients leaving (``on_disconnect``): each node keeps ``p:watch:<id>`` alive (a
key with a TTL of ``WATCH_TTL``, renewed every ``WATCH_EVERY``) while it has a
follower of that session. The worker running the session reads it at every beat:
``grace`` cancels once nobody has watched for ``DEEPRESEARCH_DISCONNECT_GRACE``
seconds (at least ``ATTACH_WINDOW`` from the start), ``cancel`` once nobody has
watched for ``WATCH_TTL``. So nodes agree without talking to each other: the key
is the count of interested nodes that matters (zero or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from deepresearch.config import Settings
from deepresearch.errors import ConfigurationError, Overloaded, SessionConflict, SessionNotFound
from deepresearch.events import (
    TERMINAL_TYPES,
    Cancelled,
    Error,
    Event,
    Queued,
    SessionStart,
    Timeout,
)
from deepresearch.events import utc_now as now_utc
from deepresearch.llm.base import BackendState
from deepresearch.runtime.admission import QuotaExceeded
from deepresearch.runtime.deltas import WireView
from deepresearch.runtime.follower import first_page
from deepresearch.runtime.manager import SessionRequest
from deepresearch.runtime.metrics import Metrics
from deepresearch.runtime.queries import StoredSessions, busy_message
from deepresearch.runtime.retention import Retention
from deepresearch.sessions import redis_scripts as scripts
from deepresearch.sessions.leases import Leases
from deepresearch.sessions.records import (
    STATUS_BY_TERMINAL_EVENT,
    UNFINISHED,
    SessionChanges,
    SessionRecord,
    StoredEvent,
)
from deepresearch.sessions.redis import (
    RECONNECT_RETRIES,
    Admit,
    ConversationBusy,
    QueueFull,
    QuotaFull,
    RedisSessionStore,
)
from deepresearch.sessions.redis_tails import TailHub
from deepresearch.sessions.redis_workers import WorkerInfo

log = logging.getLogger("deepresearch.dispatch")

QUEUE_FUNCTION = "run_session"
# The error a swept job carries (its worker stopped beating).
SWEPT = "swept"
# saq keeps a finished job's record this long (seconds).
JOB_TTL = 3600
# The sweep waits this long for a swept job's abort to be acknowledged (see Timings).
ABORT_WAIT = 0.1
# What a job's run returns when the session was not its delivery's to run: another
# worker holds the lease (at-least-once delivered the job twice, or this worker lost
# the lease to the attempt after it). saq must not finish the job: it is that worker's.
HELD_ELSEWHERE = "held elsewhere"
# A node holds a session's lease this long at most, to write one event.
NODE_LEASE = 2.0
# Queue positions are read and announced at most this often.
QUEUE_REPORT_INTERVAL = 1.0
# A node with followers of a session renews its watch key this often; the key lives
# WATCH_TTL seconds.
WATCH_EVERY = 2.0
WATCH_TTL = 3 * WATCH_EVERY
# How long a new session waits for its first follower before the disconnect policy applies.
ATTACH_WINDOW = 10.0
# The cancel key outlives any run.
CANCEL_TTL = 86_400
READ_PAGE = 1000
STORE_RETRY_AFTER = 10
# A worker with a free slot and nothing it may take looks again this often.
TAKE_POLL = 0.2
# Admission reads the cluster's slots (the workers' beats) at most this often.
SLOTS_FRESH = 1.0
# An idle follower still wakes this often to see whether it should go on.
FOLLOW_POLL = 5.0


def _without_password(url: str) -> str:
    """The URL as it may be logged: a password in it replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _reconnecting_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), RECONNECT_RETRIES)


@dataclass(frozen=True)
class Timings:
    """saq's timers and the lease, from one figure: ``DEEPRESEARCH_RECOVERY_SECONDS``.

    A dead worker's job is found by the sweep (every ``sweep`` s, by whichever worker
    takes the sweep's lock) once its heartbeat is ``heartbeat`` s old; the sweep asks
    it to abort, waits ``abort_wait`` s for an answer nobody will give, and re-queues
    it. saq's default wait is 5 s *per job, one job after another*: a worker dying
    with 64 sessions would take five minutes to recover. The lease is what guards a
    session against two runners, so the wait is cut to a tenth of a second. The
    heartbeat takes what is left of the recovery figure after the sweep period and a
    2 s margin (the swept jobs' waits, the new attempt taking the lease). The lease's
    TTL is the heartbeat: by the time a job is re-queued its dead worker's lease has
    lapsed.
    """

    recovery: float
    sweep: int
    abort_wait: float
    heartbeat: int

    @classmethod
    def for_recovery(cls, seconds: float) -> Timings:
        sweep = max(1, int(seconds // 6))
        heartbeat = max(1, int(seconds - sweep - 2))
        return cls(seconds, sweep, ABORT_WAIT, heartbeat)

    @property
    def lease_ttl(self) -> float:
        return float(self.heartbeat)

    @property
    def beat(self) -> float:
        """How often a running session renews its lease and touches its job."""
        return self.heartbeat / 4


class SessionQueue(RedisQueue):
    """saq's Redis queue, its sweep waiting ``abort_wait`` (not 5 s) for each abort,
    and its dequeue fair across keys (``TAKE``, see ``sessions/redis_scripts.py``)."""

    def __init__(
        self,
        redis: Redis,
        *,
        name: str,
        abort_wait: float,
        store_prefix: str = "deepresearch",
        running_per_key: int = 0,
    ) -> None:
        super().__init__(redis, name=name, swept_error_message=SWEPT)
        self._abort_wait = abort_wait
        self._store_prefix = store_prefix
        self._running_per_key = running_per_key
        self._take = redis.register_script(scripts.TAKE)
        self._plan = redis.register_script(scripts.PLAN)
        self._leave = redis.register_script(scripts.LEAVE_ACTIVE)
        # Told when saq gives a job up for good (see ``finish``).
        self.on_given_up: Callable[[Job], Awaitable[None]] | None = None
        # A worker with an adaptive limit passes this gate (room for one more) to
        # dequeue; it is told the key of the job it took (counted until it starts).
        self.gate: Callable[[], AbstractAsyncContextManager[Callable[[str], None]]] | None = None

    def _fair_args(self) -> list[str | int]:
        return [
            self._store_prefix,
            self.job_id(""),
            self._queued,
            self._active,
            self._running_per_key,
        ]

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return await super().sweep(lock, abort=min(abort, self._abort_wait))

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        if self.gate is None:
            return await self._take_fairly(timeout)
        async with self.gate() as took:
            job = await self._take_fairly(timeout)
            if job is not None:
                took(job.key)
            return job

    async def _take_fairly(self, timeout: float) -> Job | None:
        """The next job in fair order (``TAKE`` moves it to saq's active list, as saq's
        own dequeue does), looking again every ``TAKE_POLL`` s for ``timeout`` s (0:
        until one comes). saq's dequeue blocks on its list instead; a fair choice needs
        the whole line, so this polls (only a worker with a free slot dequeues)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else math.inf
        while True:
            job_id = await self._take(args=self._fair_args(), client=self.redis)
            if job_id is not None:
                return await self._get_job_by_id(job_id)
            left = deadline - loop.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(TAKE_POLL, left))

    async def finish(
        self,
        job: Job,
        status: Status,
        *,
        result: Any = None,
        error: str | None = None,
        **kwargs: Any,
    ) -> None:
        """saq's finish, and when that gives a session's job up (its last attempt
        failed, or its worker died with no attempt left: swept, not retryable), the
        session is ended too: nobody will run it again. A user's abort is not giving
        up: the node that asked for it writes the ending.

        A delivery whose run found the session held elsewhere finishes nothing: the
        job's record belongs to the worker running it (whose beat keeps it touched, so
        that its death is swept). Only this delivery's extra place in the active list
        goes."""
        if status == Status.COMPLETE and result == HELD_ELSEWHERE:
            await self._leave(keys=[self._active], args=[job.id], client=self.redis)
            return
        await super().finish(job, status, result=result, error=error, **kwargs)
        # (A swept job with attempts left is re-queued by the sweep; a worker may still
        # report that attempt aborted as "swept" if it saw the sweep's abort.)
        swept_for_good = status == Status.ABORTED and error == SWEPT and not job.retryable
        given_up = status == Status.FAILED or swept_for_good
        if given_up and job.function == QUEUE_FUNCTION and self.on_given_up is not None:
            try:
                await self.on_given_up(job)
            except Exception as exc:  # the sweep (or the worker) must go on
                log.error("[session %s] could not end the given-up session: %s", job.key, exc)

    async def positions(self) -> dict[str, int]:
        """Queued sessions by their place in the fair order (1 = next), as things
        stand: the order ``TAKE`` would start them in if nobody else arrived."""
        ids = await self._plan(args=self._fair_args(), client=self.redis)
        return {self.job_key_from_id(raw.decode()): n for n, raw in enumerate(ids, 1)}


class Cluster:
    """What every process of a cluster shares in Redis: the store, the queue, the
    leases, checkpoints and worker beats, and the keys nodes and workers agree by."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.timings = Timings.for_recovery(settings.recovery_seconds)
        self.store = RedisSessionStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            retention=timedelta(days=settings.retention_days),
        )
        # saq's client speaks bytes (it pickles nothing, but its scripts return ids).
        self.queue = SessionQueue(
            Redis.from_url(
                settings.redis_url,
                retry=_reconnecting_retry(),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            ),
            name=settings.redis_prefix,
            abort_wait=self.timings.abort_wait,
            store_prefix=settings.redis_prefix,
            running_per_key=settings.max_running_per_key if keyed(settings) else 0,
        )
        self.queue.on_given_up = self.given_up

    async def open(self) -> None:
        try:
            await self.store.open()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise ConfigurationError(
                f"DEEPRESEARCH_REDIS_URL: cannot reach Redis at {_without_password(self.store.url)}"
                f" ({exc})"
            ) from exc
        await self.queue.connect()
        self.leases = self.store.leases()
        self.checkpoints = self.store.checkpoints()
        self.workers = self.store.workers()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.queue.disconnect()
        await self.store.close()

    @property
    def prefix(self) -> str:
        return self.store.keys.prefix

    def cancel_key(self, session_id: str) -> str:
        return f"{self.prefix}:cancel:{session_id}"

    def watch_key(self, session_id: str) -> str:
        return f"{self.prefix}:watch:{session_id}"

    async def cancel_reason(self, session_id: str) -> str | None:
        return cast(str | None, await self.store.client.get(self.cancel_key(session_id)))

    async def watched(self, session_id: str) -> bool:
        return bool(await self.store.client.exists(self.watch_key(session_id)))

    async def given_up(self, job: Job) -> None:
        """saq gave the session's job up: end the session with one terminal event
        saying why (or ``cancelled`` when a cancel was asked), so that none stays
        ``processing`` or ``queued`` with no job behind it. Under a moment's lease: a
        dead worker's has lapsed by the time its job is swept, and a worker whose run
        failed released its own."""
        sid = job.key
        reason = await self.cancel_reason(sid)
        if reason is not None:
            terminal: Event = Cancelled(session_id=sid, content=reason)
        else:
            why = (
                "its worker stopped responding each time"
                if job.error == SWEPT
                else "its last run failed"
            )
            attempts = f"{job.attempts} attempt" + ("" if job.attempts == 1 else "s")
            content = f"gave up after {attempts} to run it ({why})"
            terminal = Error(session_id=sid, content=content)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timings.lease_ttl + NODE_LEASE
        while not await self.end_unleased(sid, terminal):
            if loop.time() > deadline:  # someone live holds it: it is theirs to end
                log.warning("[session %s] given up, but its lease is held", sid[:8])
                return
            await asyncio.sleep(min(0.5, self.timings.lease_ttl / 10))
        log.error("[session %s] given up after %d attempts", sid[:8], job.attempts)

    async def end_unleased(self, session_id: str, terminal: Event) -> bool:
        """Write ``terminal`` for a session nobody runs, under a moment's lease.

        True when the session has ended (by this call or before it); False when
        someone holds the lease (its holder writes the ending).
        """
        token = f"node:{uuid.uuid4().hex}"
        if not await self.leases.acquire(session_id, token, NODE_LEASE):
            return False
        try:
            await self.end_leased(session_id, terminal, token)
            return True
        finally:
            with contextlib.suppress(Exception):
                await self.leases.release(session_id, token)

    async def end_leased(self, session_id: str, terminal: Event, token: str) -> None:
        """Write ``terminal`` (and the record's end) after the log's last event, fenced
        by ``token``'s lease; nothing if the session has ended already."""
        record = await self.store.get(session_id)
        if record is None or record.status not in UNFINISHED:
            return
        status = STATUS_BY_TERMINAL_EVENT[terminal.type]
        changes = SessionChanges(status=status, ended_at=now_utc(), error=terminal.content)
        stored = StoredEvent(record.last_seq + 1, terminal.type, terminal.model_dump_json())
        await self.store.append(session_id, [stored], changes, lease=token)
        with contextlib.suppress(Exception):
            await self.checkpoints.delete(session_id)

    async def counts(self) -> ClusterCounts:
        capacity = await self.workers.capacity()
        queued = await self.queue.count("queued")
        running = await cast(
            "Awaitable[int]", self.store.client.zcard(self.store.keys.sessions(status="processing"))
        )
        return ClusterCounts(
            queued=queued, running=running, slots=capacity.slots, workers=capacity.workers
        )

    async def health(self, *, details: bool) -> dict[str, Any]:
        """``/health``'s counts for the whole cluster, from the live workers' beats (and,
        for admins, each worker and the reasons).

        A session runs on whichever worker takes it, so what the cluster promises is
        what every live worker has: ``index.documents`` is the smallest index among
        them, ``code_execution`` holds when every one can run code (none alive: no);
        ``index.building`` says some worker is still building (its sessions' searches
        wait for it). Only workers call the models, so ``llm`` is theirs too: a backend
        (its URL and model) counts once however many workers use it, and counts
        healthy when some live worker's pool sees it healthy (``cluster_llm``)."""
        try:
            workers = await self.workers.alive()
            queued = await self.queue.count("queued")
        except Exception as exc:  # Redis restarting: say so, quickly
            log.warning("health: Redis unreachable: %s", exc)
            unknown = "Redis is unreachable: the workers' state is unknown"
            nothing: dict[str, Any] = {"building": False, "documents": 0}
            answer: dict[str, Any] = {
                "status": "degraded",
                "redis": "unreachable",
                "index": nothing | ({"error": unknown} if details else {}),
                "code_execution": False,
                "llm": {"backends": 0, "healthy": 0},
            }
            if details:
                answer["code_execution_reason"] = unknown
            return answer
        slots = sum(worker.slots for worker in workers)
        running = sum(worker.running for worker in workers)
        code = bool(workers) and all(worker.code_execution for worker in workers)
        index: dict[str, Any] = {
            "building": any(worker.index_building for worker in workers),
            "documents": min((worker.documents for worker in workers), default=0),
        }
        backends = cluster_llm(workers)
        healthy = sum(1 for backend in backends if backend.healthy)
        answer = {
            "active_sessions": running,
            "queued_sessions": queued,
            "max_concurrent": slots,
            "lock_acquired": running >= slots,
            "workers": len(workers),
            "index": index,
            "code_execution": code,
            "llm": {"backends": len(backends), "healthy": healthy},
        }
        if details:
            answer["llm"] = {
                "configured": bool(backends),
                "backends": [vars(backend) for backend in backends],
                "healthy": healthy,
            }
            errors = [f"{w.name}: {w.index_error}" for w in workers if w.index_error]
            index["error"] = "; ".join(errors) or None
            unable = [
                f"{w.name}: {w.code_execution_reason or 'not said'}"
                for w in workers
                if not w.code_execution
            ]
            answer["code_execution_reason"] = (
                None if code else "; ".join(unable) or "no worker is alive"
            )
            answer["cluster"] = {
                "recovery_seconds": self.timings.recovery,
                "workers": [
                    {
                        "name": worker.name,
                        "slots": worker.slots,
                        "running": worker.running,
                        "started_at": worker.started_at.isoformat(),
                        "beat_at": worker.beat_at.isoformat(),
                        "index": worker.index(),
                        "code_execution": worker.code_execution,
                        "code_execution_reason": worker.code_execution_reason,
                        # None: a worker from before beats carried its backends
                        "llm": None
                        if worker.llm is None
                        else [vars(state) for state in worker.llm],
                    }
                    for worker in workers
                ],
            }
        return answer


@dataclass(frozen=True)
class ClusterBackend:
    """One LLM backend as the live workers see it, for ``/health``."""

    url: str  # without credentials (``public_url``)
    model: str | None
    healthy: bool | None  # some worker sees it healthy; None: no worker has used it yet
    workers: int  # live workers configured with it
    workers_healthy: int  # of those, the ones whose pool sees it healthy
    last_error: str | None  # each worker's that sees it unhealthy: "name: error; ..."


def cluster_llm(workers: Sequence[WorkerInfo]) -> list[ClusterBackend]:
    """The live workers' backends, each once (by URL and model), in first-seen order.
    Healthy when some worker sees it healthy (a session on that worker can use it);
    unhealthy when a worker has seen it fail and none sees it healthy; None when no
    worker has used it yet. A worker from before beats carried backends adds none."""
    seen: dict[tuple[str, str | None], list[tuple[str, BackendState]]] = {}
    for worker in workers:
        for state in worker.llm or ():
            seen.setdefault((state.url, state.model), []).append((worker.name, state))
    backends = []
    for (url, model), views in seen.items():
        verdicts = [state.healthy for _, state in views]
        errors = [f"{name}: {state.last_error}" for name, state in views if state.last_error]
        backends.append(
            ClusterBackend(
                url=url,
                model=model,
                healthy=True if True in verdicts else (False if False in verdicts else None),
                workers=len(views),
                workers_healthy=verdicts.count(True),
                last_error="; ".join(errors) or None,
            )
        )
    return backends


@dataclass(frozen=True)
class ClusterCounts:
    """The cluster's figures as Redis has them now."""

    queued: int  # sessions in saq's queue (waiting for a worker)
    running: int  # sessions whose record says ``processing``
    slots: int  # the sum of the live workers' slots
    workers: int


class ClusterMetrics:
    """An API node's own ``/metrics`` in distributed mode, beside the node's others:
    the sessions it admitted (a counter) and the cluster's figures (gauges set from
    Redis when scraped)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.admitted = PromCounter(
            "deepresearch_sessions_admitted",
            "Sessions this API node admitted (created and enqueued).",
            registry=registry,
        )
        self.queued = Gauge(
            "deepresearch_cluster_queue_length",
            "Sessions waiting in the cluster's queue for a worker (read from Redis).",
            registry=registry,
        )
        self.running = Gauge(
            "deepresearch_cluster_sessions_running",
            "Sessions the cluster's workers are running (read from Redis).",
            registry=registry,
        )
        self.slots = Gauge(
            "deepresearch_cluster_slots",
            "The sum of the live workers' slots (read from Redis).",
            registry=registry,
        )
        self.workers = Gauge(
            "deepresearch_cluster_workers",
            "Workers whose heartbeat is live (read from Redis).",
            registry=registry,
        )

    def observe(self, counts: ClusterCounts) -> None:
        self.queued.set(counts.queued)
        self.running.set(counts.running)
        self.slots.set(counts.slots)
        self.workers.set(counts.workers)


@dataclass
class _Waiting:
    """A session this node admitted, while it waits in saq's queue."""

    admitted: float  # loop time
    position: int = 0  # the last one announced (0: none yet)


def keyed(settings: Settings) -> bool:
    """Sessions have owners (client keys are on): per-key quotas apply."""
    return bool(settings.api_keys or settings.keys_file)


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DistributedSessions(StoredSessions):
    """The routes' session manager on an API node in distributed mode."""

    def __init__(
        self, settings: Settings, cluster: Cluster, metrics: Metrics | None = None
    ) -> None:
        self._settings = settings
        self._cluster = cluster
        self._metrics = ClusterMetrics(metrics.registry) if metrics is not None else None
        # Per-key quotas apply when sessions have owners (client keys are on).
        self._keyed = keyed(settings)
        self._capacity: tuple[float, int] | None = None  # (read at, the cluster's slots)
        self._template = settings.agent_template()
        self._hub: TailHub | None = None
        self._waiting: dict[str, _Waiting] = {}
        self._watches: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        # Finished conversations also expire by TTL in Redis; this keeps the count
        # bound (DEEPRESEARCH_RETENTION_MAX_SESSIONS) as in one process.
        self._retention = Retention(
            cluster.store, days=settings.retention_days, keep=settings.retention_max_sessions
        )
        # Owners of the sessions a worker in this process runs (its tools act for them).
        self.running_owners: dict[str, str | None] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to settle: unfinished sessions are the cluster's live ones (saq
        re-queues a dead worker's jobs; the lease says whether anyone runs them)."""
        self._hub = TailHub(self._cluster.store)
        await self._hub.__aenter__()
        self._tasks = [
            asyncio.create_task(self._announce_forever(), name="queue positions"),
            asyncio.create_task(self._watch_forever(), name="watches"),
        ]
        self._retention.start()

    async def close(self) -> None:
        await self._retention.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._hub is not None:
            await self._hub.__aexit__(None, None, None)
            self._hub = None

    @property
    def store(self) -> RedisSessionStore:
        return self._cluster.store

    @property
    def live_count(self) -> int:
        """Sessions this node admitted that still wait in the queue (the cluster's
        running ones are the workers': ``Cluster.health``)."""
        return len(self._waiting)

    def owner_of_session(self, session_id: str) -> str | None:
        return self.running_owners.get(session_id)

    # -- starting ---------------------------------------------------------------------------

    async def start(self, request: SessionRequest) -> str:
        """Create the session (record and ``session_start``) and enqueue it."""
        self._template.for_request(**request.generation)  # refuse bad settings first
        place = await self._place(request.session_id, request.owner)
        queue = self._cluster.queue
        try:
            slots = await self._slots()
        except Exception as exc:
            raise Overloaded(
                "the session queue is unreachable just now", retry_after=STORE_RETRY_AFTER
            ) from exc
        record = place.record(request)
        sid = record.id
        start = SessionStart(session_id=sid, question=request.question, content=sid)
        settings = self._settings
        admit = Admit(
            follow_up=place.conversation_id is not None,
            slots=slots,
            max_queue=settings.max_queue,
            max_queued_per_key=settings.max_queued_per_key if self._keyed else 0,
        )
        try:
            await self.store.create(record, admit=admit)
        except ConversationBusy as exc:
            raise SessionConflict(busy_message(place.conversation)) from exc
        except QueueFull as exc:
            raise Overloaded(
                f"all {slots} slots are busy and the queue is full ({exc.waiting} waiting)",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        except QuotaFull as exc:
            raise QuotaExceeded(
                f"this key already has {settings.max_queued_per_key} sessions waiting",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        except SessionConflict:
            raise
        except Exception as exc:
            log.error("[session %s] the store cannot create it: %s", sid[:8], exc)
            raise Overloaded(
                "the session store cannot save new sessions just now",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        history = place.history or request.history
        try:
            await self.store.append(sid, [StoredEvent(1, start.type, start.model_dump_json())])
            await queue.enqueue(
                QUEUE_FUNCTION,
                key=sid,
                session_id=sid,
                generation=dict(request.generation),
                history=[[exchange.question, exchange.answer] for exchange in history],
                timeout=0,
                heartbeat=self._cluster.timings.heartbeat,
                retries=self._settings.job_attempts,
                ttl=JOB_TTL,
            )
        except Exception as exc:
            log.error("[session %s] could not be enqueued: %s", sid[:8], exc)
            with contextlib.suppress(Exception):
                await self._cluster.end_unleased(
                    sid, Error(session_id=sid, content="could not be enqueued")
                )
            raise Overloaded(
                "the session queue is unreachable just now", retry_after=STORE_RETRY_AFTER
            ) from exc
        self._waiting[sid] = _Waiting(asyncio.get_running_loop().time())
        if self._metrics is not None:
            self._metrics.admitted.inc()
        question = request.question if self._settings.log_questions else "(question not logged)"
        log.info("[session %s] enqueued: %s", sid[:8], question)
        return sid

    async def _slots(self) -> int:
        """The cluster's slots (the sum of its live workers'), read at most once a
        second: admission's checks count the sessions waiting beyond them."""
        loop = asyncio.get_running_loop()
        if self._capacity is None or loop.time() - self._capacity[0] > SLOTS_FRESH:
            capacity = await self._cluster.workers.capacity()
            self._capacity = (loop.time(), capacity.slots)
        return self._capacity[1]

    async def refresh_metrics(self) -> None:
        """``/metrics``'s cluster gauges, read from Redis now (a scrape awaits this)."""
        if self._metrics is None:
            return
        try:
            counts = await self._cluster.counts()
        except Exception as exc:  # Redis away: the gauges keep their last values
            log.warning("metrics: Redis unreachable: %s", exc)
            return
        self._metrics.observe(counts)

    # -- queue positions and queue timeouts ---------------------------------------------------

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_REPORT_INTERVAL)
            if not self._waiting:
                continue
            try:
                await self._announce()
            except Exception as exc:
                log.warning("queue positions: %s", exc)

    async def _announce(self) -> None:
        positions = await self._cluster.queue.positions()
        now = asyncio.get_running_loop().time()
        for sid, waiting in list(self._waiting.items()):
            position = positions.get(sid)
            if position is None:  # a worker took it (or it was cancelled)
                self._waiting.pop(sid, None)
                continue
            if now - waiting.admitted > self._settings.queue_timeout:
                self._waiting.pop(sid, None)
                await self._expire(sid)
                continue
            if position != waiting.position and not await self._write_position(sid, position):
                self._waiting.pop(sid, None)
                continue
            waiting.position = position

    async def _write_position(self, sid: str, position: int) -> bool:
        """A ``queued`` event under a moment's lease; False once a worker has it."""
        cluster = self._cluster
        token = f"node:{uuid.uuid4().hex}"
        if not await cluster.leases.acquire(sid, token, NODE_LEASE):
            return False
        try:
            record = await self.store.get(sid)
            if record is None or record.status != "queued":
                return False
            event = Queued(
                session_id=sid,
                position=position,
                content=f"waiting for a free slot: position {position}",
            )
            stored = StoredEvent(record.last_seq + 1, event.type, event.model_dump_json())
            await self.store.append(sid, [stored], lease=token)
            return True
        finally:
            with contextlib.suppress(Exception):
                await cluster.leases.release(sid, token)

    async def _expire(self, sid: str) -> None:
        seconds = self._settings.queue_timeout
        reason = f"timeout: no slot became free within {seconds:g} s"
        await self._stop(sid, reason, Timeout(session_id=sid, content=reason))

    # -- cancelling ---------------------------------------------------------------------------

    async def cancel(self, session_id: str, owner: str | None, reason: str) -> SessionRecord:
        """Cancel a queued or running session, wherever it runs, and wait for its end."""
        record = await self.get(session_id, owner)
        if record.status not in UNFINISHED:
            raise SessionConflict(f"session {session_id} already ended ({record.status})")
        return await self._stop(
            session_id, reason, Cancelled(session_id=session_id, content=reason)
        )

    async def _stop(self, sid: str, reason: str, terminal: Event) -> SessionRecord:
        cluster = self._cluster
        await cluster.store.client.set(cluster.cancel_key(sid), reason, ex=CANCEL_TTL)
        job = await cluster.queue.job(sid)
        if job is not None and job.status not in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
            await cluster.queue.abort(job, reason)
        self._waiting.pop(sid, None)
        loop = asyncio.get_running_loop()
        # The holder (if any) ends it within a beat; one whose worker died loses its
        # lease within a TTL, and then this node ends it.
        deadline = loop.time() + 2 * cluster.timings.lease_ttl + cluster.timings.recovery
        while True:
            record = await self.store.get(sid)
            if record is None:
                raise SessionNotFound(f"no session {sid}")
            if record.status not in UNFINISHED:
                return record
            if await cluster.end_unleased(sid, terminal):
                continue
            if loop.time() > deadline:
                return record
            await self.store.tail(sid, record.last_seq, 1.0)

    # -- following ----------------------------------------------------------------------------

    async def follow(
        self,
        session_id: str,
        after: int = 0,
        idle: float | None = None,
        *,
        deltas: bool = False,
    ) -> AsyncIterator[StoredEvent | None]:
        """The session's events after ``after`` as the wire carries them, from Redis:
        the stored ones a page at a time, then live from the node's ``TailHub``,
        until the terminal one. ``None`` after ``idle`` quiet seconds."""
        if await self.store.get(session_id) is None:
            raise SessionNotFound(f"no session {session_id}")
        view = WireView(session_id, deltas=deltas)
        self._watch(session_id)
        try:
            last = after
            rows = await first_page(self.store, view, session_id, after)
            while True:
                for row in rows:
                    for out in view.feed(row):
                        yield out
                    last = row.seq
                    if row.type in TERMINAL_TYPES:
                        for out in view.flush():
                            yield out
                        return
                if len(rows) < READ_PAGE:
                    break
                rows = await self.store.events(session_id, last, READ_PAGE)
            assert self._hub is not None
            with await self._hub.subscribe(session_id, last) as subscription:
                while True:
                    rows = await subscription.next(idle if idle is not None else FOLLOW_POLL)
                    if not rows:
                        if idle is not None:
                            yield None
                        continue
                    for row in rows:
                        if row.seq <= last:
                            continue
                        for out in view.feed(row):
                            yield out
                        last = row.seq
                        if row.type in TERMINAL_TYPES:
                            for out in view.flush():
                                yield out
                            return
        finally:
            self._unwatch(session_id)

    # -- watching (on_disconnect across nodes) ------------------------------------------------

    def _watch(self, session_id: str) -> None:
        self._watches[session_id] += 1
        if self._watches[session_id] == 1:
            task = asyncio.ensure_future(self._renew_watches([session_id]))
            task.add_done_callback(lambda done: done.exception())  # never unretrieved

    def _unwatch(self, session_id: str) -> None:
        self._watches[session_id] -= 1
        if self._watches[session_id] <= 0:
            del self._watches[session_id]

    async def _renew_watches(self, session_ids: list[str]) -> None:
        cluster = self._cluster
        async with cluster.store.client.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(cluster.watch_key(sid), "1", px=int(WATCH_TTL * 1000))
            await pipe.execute()

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if not self._watches:
                continue
            try:
                await self._renew_watches(list(self._watches))
            except Exception as exc:
                log.warning("watches: %s", exc)


async def take_lease(leases: Leases, session_id: str, token: str, ttl: float) -> bool:
    """A worker's lease on the session, waiting at most one TTL (plus a node's moment)
    for it: a dead holder's lease lapses by then and a node holds it for a moment
    only; a holder still renewing after that is a live worker running the session
    (at-least-once delivered its job twice): False, leave it the session."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ttl + NODE_LEASE
    while not await leases.acquire(session_id, token, ttl):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(min(0.5, ttl / 10))  # until it lapses or is released
    return True


def slots_for(settings: Settings) -> int:
    """A worker's saq concurrency: the number, or for ``auto`` the adaptive bound's top
    (the adaptive limit then gates dequeuing below it)."""
    if isinstance(settings.max_concurrent, int):
        return settings.max_concurrent
    return settings.max_concurrent_max


def shutdown_grace(settings: Settings) -> int:
    return math.ceil(settings.shutdown_grace)
