"""When saq gives a session's job up, the session ends with one terminal event; when
saq has not given it up (a user's abort, a sweep with attempts left), nothing is
written; a second delivery of a running job leaves the job to its runner. In-process
against a real Redis: saq's ``finish`` and ``sweep`` called as its workers call them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from saq.job import Job, Status

from deepresearch.config import Settings
from deepresearch.events import SessionStart
from deepresearch.runtime.dispatch import (
    ABORT_WAIT,
    HELD_ELSEWHERE,
    QUEUE_FUNCTION,
    SWEPT,
    Cluster,
)
from deepresearch.sessions import StoredEvent
from tests.redis_server import RedisServer
from tests.sessions.conformance import record


@pytest.fixture
async def cluster(durable_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    settings = Settings(
        redis_url=durable_redis.url,
        redis_prefix=f"giveup-{uuid.uuid4().hex[:8]}",
        recovery_seconds=6,
        data_dir=tmp_path,
    )
    shared = Cluster(settings)
    await shared.open()
    yield shared
    await shared.close()


async def enqueued(cluster: Cluster, sid: str, *, retries: int, attempts: int) -> Job:
    """A session as a worker left it, and its job after ``attempts`` runs."""
    await cluster.store.create(record(sid, status="processing"))
    start = SessionStart(session_id=sid, question="q", content=sid)
    await cluster.store.append(sid, [StoredEvent(1, start.type, start.model_dump_json())])
    await cluster.queue.enqueue(QUEUE_FUNCTION, key=sid, session_id=sid, retries=retries)
    job = await cluster.queue.job(sid)
    assert job is not None
    job.attempts = attempts
    return job


async def last_event(cluster: Cluster, sid: str) -> tuple[str, str]:
    events = await cluster.store.events(sid, 0, 100)
    return events[-1].type, json.loads(events[-1].data)["content"]


async def test_a_failed_last_attempt_ends_the_session_with_an_error(cluster: Cluster) -> None:
    job = await enqueued(cluster, "s-failed", retries=1, attempts=1)
    await cluster.queue.finish(job, Status.FAILED, error="Traceback ...")
    found = await cluster.store.get("s-failed")
    assert found is not None and found.status == "failed"
    assert await last_event(cluster, "s-failed") == (
        "error",
        "gave up after 1 attempt to run it (its last run failed)",
    )
    # Said once: finishing again writes nothing more.
    await cluster.queue.finish(job, Status.FAILED, error="again")
    assert len(await cluster.store.events("s-failed", 0, 100)) == 2


async def test_a_sweep_with_no_attempt_left_ends_it_and_a_cancel_asked_wins(
    cluster: Cluster,
) -> None:
    job = await enqueued(cluster, "s-swept", retries=3, attempts=3)
    await cluster.queue.finish(job, Status.ABORTED, error=SWEPT)
    assert await last_event(cluster, "s-swept") == (
        "error",
        "gave up after 3 attempts to run it (its worker stopped responding each time)",
    )

    job = await enqueued(cluster, "s-cancel", retries=2, attempts=2)
    await cluster.store.client.set(cluster.cancel_key("s-cancel"), "cancelled by the client")
    await cluster.queue.finish(job, Status.ABORTED, error=SWEPT)
    assert await last_event(cluster, "s-cancel") == ("cancelled", "cancelled by the client")


async def test_a_users_abort_or_a_sweep_with_attempts_left_is_not_giving_up(
    cluster: Cluster,
) -> None:
    job = await enqueued(cluster, "s-abort", retries=3, attempts=3)
    await cluster.queue.finish(job, Status.ABORTED, error="cancelled by the client")
    job = await enqueued(cluster, "s-retry", retries=3, attempts=1)
    await cluster.queue.finish(job, Status.ABORTED, error=SWEPT)
    for sid in ("s-abort", "s-retry"):
        found = await cluster.store.get(sid)
        assert found is not None and found.status == "processing"
        assert len(await cluster.store.events(sid, 0, 100)) == 1


async def running(cluster: Cluster, sid: str) -> Job:
    """A session's job as a worker runs it: taken from the queue, attempt 1, active."""
    await cluster.store.create(record(sid, status="processing"))
    await cluster.queue.enqueue(QUEUE_FUNCTION, key=sid, session_id=sid, retries=3, heartbeat=1)
    job = await cluster.queue.dequeue(timeout=1)
    assert job is not None and job.key == sid
    job.attempts = 1
    await job.update(status=Status.ACTIVE)
    return job


async def places_in_active(cluster: Cluster, job: Job) -> int:
    active = await cluster.queue.redis.lrange(cluster.queue._active, 0, -1)
    return active.count(job.id.encode())


async def stop_beating(cluster: Cluster, job: Job) -> None:
    """As if the job's worker died: its last touch long past the heartbeat."""
    job.touched = int(time.time() * 1000) - 60_000
    await cluster.queue.redis.set(job.id, cluster.queue.serialize(job))


async def test_a_second_delivery_leaves_the_running_job_to_its_runner(cluster: Cluster) -> None:
    """At-least-once delivered a running session's job again; the second delivery found
    the lease held and returns ``HELD_ELSEWHERE``. The job stays active with one place
    in the active list, so the runner's death is still swept and re-queued."""
    job = await running(cluster, "s-twice")
    await cluster.queue.redis.rpush(cluster.queue._queued, job.id)  # delivered again
    second = await cluster.queue.dequeue(timeout=1)
    assert second is not None and second.key == "s-twice"
    assert await places_in_active(cluster, job) == 2

    await cluster.queue.finish(second, Status.COMPLETE, result=HELD_ELSEWHERE)
    assert await places_in_active(cluster, job) == 1
    stored = await cluster.queue.job("s-twice")
    assert stored is not None and stored.status == Status.ACTIVE

    await stop_beating(cluster, job)
    assert await cluster.queue.sweep(lock=1) == [job.id]
    requeued = await cluster.queue.job("s-twice")
    assert requeued is not None and requeued.status == Status.QUEUED
    found = await cluster.store.get("s-twice")
    assert found is not None and found.status == "processing"


async def test_a_held_elsewhere_run_with_a_single_place_keeps_it(cluster: Cluster) -> None:
    """A run that lost its lease to the next attempt returns ``HELD_ELSEWHERE`` too; the
    job's only place in the active list is the new attempt's and stays."""
    job = await running(cluster, "s-stale")
    await cluster.queue.finish(job, Status.COMPLETE, result=HELD_ELSEWHERE)
    assert await places_in_active(cluster, job) == 1


async def test_the_sweep_waits_a_moment_not_saqs_five_seconds_per_job(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """saq's worker calls ``sweep(lock)`` and saq would wait 5 s for each swept job's
    abort, one after another; ours waits ``ABORT_WAIT``."""
    waits: list[float | None] = []
    refresh = Job.refresh

    async def recording(self: Job, until_complete: float | None = None) -> None:
        waits.append(until_complete)
        await refresh(self, until_complete)

    monkeypatch.setattr(Job, "refresh", recording)
    job = await running(cluster, "s-dead")
    await stop_beating(cluster, job)
    assert await cluster.queue.sweep(1) == [job.id]
    assert waits == [ABORT_WAIT]
