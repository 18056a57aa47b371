"""When saq gives a session's job up, the session ends with one terminal event; when
saq has not given it up (a user's abort, a sweep with attempts left), nothing is
written. In-process against a real Redis: saq's ``finish`` called as its worker and
its sweep call it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from saq.job import Job, Status

from deepresearch.config import Settings
from deepresearch.events import SessionStart
from deepresearch.runtime.dispatch import QUEUE_FUNCTION, SWEPT, Cluster
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
