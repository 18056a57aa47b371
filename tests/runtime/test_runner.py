"""The runner on its own, over the real SQLite stores, with no admission and no manager:
exactly one terminal event on every way out, nothing at all when it hands the session
back or loses its lease, and the lease token passed with every write."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from deepresearch.agent.base import AgentState, RoundHook
from deepresearch.config import AgentTemplate
from deepresearch.errors import LeaseLost, SessionFailure
from deepresearch.events import Completed, Event, RoundStart, Thinking, utc_now
from deepresearch.runtime.admission import QueueTimeout
from deepresearch.runtime.runner import SessionRun
from deepresearch.sessions.checkpoints import SqliteCheckpointStore
from deepresearch.sessions.records import SessionChanges, SessionRecord, StoredEvent
from deepresearch.sessions.sqlite import SqliteSessionStore
from tests.support import TERMINAL

Step = Event | AgentState | Exception


class Puppet:
    """An agent that does what the test pushes: events, a completed round (its state
    goes to the checkpoint hook), an exception; or waits forever."""

    def __init__(self, steps: Sequence[Step] = (), *, hang: bool = False, **keywords: Any):
        self.steps = list(steps)
        self.hang = hang
        self.on_round: RoundHook | None = keywords.get("on_round")
        self.checkpoint: AgentState | None = keywords.get("checkpoint")
        self.waiting = asyncio.Event()

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        for step in self.steps:
            if isinstance(step, Exception):
                raise step
            if isinstance(step, AgentState):
                assert self.on_round is not None
                await self.on_round(step)
                continue
            yield step
        if self.hang:
            self.waiting.set()
            await asyncio.Event().wait()


class Fenced(SqliteSessionStore):
    """The real store, remembering the lease each append named (or refusing it)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.leases: list[str | None] = []
        self.refuse = False

    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        self.leases.append(lease)
        if self.refuse:
            raise LeaseLost("another worker holds it")
        await super().append(session_id, events, changes, lease=lease)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Fenced]:
    store = Fenced(tmp_path / "sessions.sqlite")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def checkpoints(tmp_path: Path) -> AsyncIterator[SqliteCheckpointStore]:
    checkpoints = SqliteCheckpointStore(tmp_path / "sessions.sqlite")
    await checkpoints.open()
    yield checkpoints
    await checkpoints.close()


async def new_run(store: Fenced, agent: Puppet | None = None, **options: Any) -> SessionRun:
    record = SessionRecord(id="s-1", question="q", status="queued", created_at=utc_now())
    await store.create(record)
    built = agent or Puppet()

    def factory(session_id: str, config: AgentTemplate, **keywords: Any) -> Puppet:
        built.on_round = keywords.get("on_round")
        built.checkpoint = keywords.get("checkpoint")
        return built

    options.setdefault("config", AgentTemplate())
    return SessionRun(record, store=store, agent_factory=factory, **options)


async def types(store: Fenced) -> list[str]:
    return [row.type for row in await store.events("s-1")]


async def ended_once(store: Fenced, expected: str) -> None:
    rows = await store.events("s-1")
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert [row.type for row in rows if row.type in TERMINAL] == [expected]
    assert rows[-1].type == expected
    record = await store.get("s-1")
    assert record is not None and record.last_seq == len(rows)


def thinking(text: str) -> Thinking:
    return Thinking(session_id="s-1", round=1, content=text, delta=text)


async def test_a_run_writes_its_events_and_ends_with_the_agents_outcome(store: Fenced) -> None:
    steps: list[Step] = [
        RoundStart(session_id="s-1", round=1),
        thinking("a"),
        thinking("ab"),
        Completed(session_id="s-1", content="done"),
    ]
    seen: list[int] = []
    run = await new_run(
        store, Puppet(steps), lease="token-1", on_event=lambda r: seen.append(r.seq)
    )
    outcome = await run.run()
    assert outcome.status == "completed" and outcome.stored and outcome.run_seconds is not None
    assert await types(store) == [
        "session_start",
        "init",
        "round_start",
        "thinking",
        "thinking",
        "completed",
    ]
    assert seen == [1, 2, 3, 4, 5, 6]
    assert set(store.leases) == {"token-1"}  # every write named the lease
    record = await store.get("s-1")
    assert record is not None and record.status == "completed" and record.started_at is not None


async def test_the_wait_step_announces_positions_and_its_timeout_ends_the_run(
    store: Fenced,
) -> None:
    async def wait() -> AsyncIterator[int]:
        yield 2
        yield 1
        raise QueueTimeout("no slot within 0.1 s")

    run = await new_run(store)
    outcome = await run.run(wait)
    assert outcome.status == "timeout" and outcome.run_seconds is None
    assert await types(store) == ["session_start", "queued", "queued", "timeout"]
    await ended_once(store, "timeout")


@pytest.mark.parametrize("when", ["before", "during"])
async def test_cancel_ends_it_cancelled_once(store: Fenced, when: str) -> None:
    agent = Puppet([RoundStart(session_id="s-1", round=1)], hang=True)
    run = await new_run(store, agent)
    if when == "before":
        assert run.cancel("cancelled early")
        outcome = await run.run()
        assert await types(store) == ["session_start", "cancelled"]
    else:
        task = asyncio.create_task(run.run())
        await agent.waiting.wait()
        assert run.cancel("cancelled by the client")
        assert not run.cancel("again")  # once
        outcome = await task
    assert outcome.status == "cancelled"
    await ended_once(store, "cancelled")


async def test_the_run_time_limit_ends_it_with_timeout(store: Fenced) -> None:
    run = await new_run(store, Puppet(hang=True), config=AgentTemplate(max_run_seconds=0.05))
    assert (await run.run()).status == "timeout"
    await ended_once(store, "timeout")


@pytest.mark.parametrize(
    ("failure", "content"),
    [
        (SessionFailure("the backend is down"), "the backend is down"),
        (RuntimeError("bug"), "internal error: RuntimeError"),
    ],
)
async def test_an_agent_error_ends_it_with_error(
    store: Fenced, failure: Exception, content: str
) -> None:
    outcome = await (await new_run(store, Puppet([failure]))).run()
    assert outcome.status == "failed"
    await ended_once(store, "error")
    record = await store.get("s-1")
    assert record is not None and record.error == content


async def test_a_storage_failure_ends_it_with_one_error_stored_once_space_is_back(
    store: Fenced,
) -> None:
    unsettled: list[tuple[str, StoredEvent, SessionChanges]] = []
    agent = Puppet([RoundStart(session_id="s-1", round=1), thinking("x")])
    run = await new_run(store, agent, on_unsettled=lambda *a: unsettled.append(a))
    writes = 0

    def full_after_three() -> None:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise sqlite3.OperationalError("database or disk is full")

    store.fault = full_after_three
    outcome = await run.run()
    assert outcome.status == "failed" and not outcome.stored
    assert run.terminal is not None and run.terminal.type == "error"
    # Its number follows the last stored event: no gap when it is finally written.
    assert [session for session, _, _ in unsettled] == ["s-1"]
    store.fault = None
    _, terminal, changes = unsettled[0]
    await store.append("s-1", [terminal], changes)
    await ended_once(store, "error")


async def test_checkpoints_are_saved_per_round_fenced_and_deleted_at_the_end(
    store: Fenced, checkpoints: SqliteCheckpointStore
) -> None:
    state = AgentState(round=1, messages=[{"role": "user", "content": "q"}], counters={"n": 1})
    saved: list[int] = []

    class Watching(Puppet):
        async def run(self, question: str) -> AsyncGenerator[Event, None]:
            async for event in super().run(question):
                found = await checkpoints.load("s-1")
                saved.append(found.last_seq if found else -1)
                yield event

    steps: list[Step] = [
        RoundStart(session_id="s-1", round=1),
        state,
        RoundStart(session_id="s-1", round=2),
        Completed(session_id="s-1"),
    ]
    run = await new_run(store, Watching(steps), checkpoints=checkpoints, lease="t")
    assert (await run.run()).status == "completed"
    # Before round 1 nothing; after it, the checkpoint names the last event it had.
    assert saved == [-1, 3, 3] and run.checkpoint_round == 1
    assert await checkpoints.load("s-1") is None


async def test_hand_back_writes_nothing_terminal_and_keeps_the_checkpoint(
    store: Fenced, checkpoints: SqliteCheckpointStore
) -> None:
    state = AgentState(round=1, messages=[])
    agent = Puppet([RoundStart(session_id="s-1", round=1), state], hang=True)
    run = await new_run(store, agent, checkpoints=checkpoints)
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    assert run.hand_back()
    outcome = await task
    assert outcome.handed_back and outcome.terminal is None and outcome.status is None
    assert not set(await types(store)) & TERMINAL
    record = await store.get("s-1")
    assert record is not None and record.status == "processing"
    assert (await checkpoints.load("s-1")) is not None


async def test_an_unexplained_cancel_asks_why_and_hands_back_by_reraising(
    store: Fenced,
) -> None:
    async def shutdown() -> str | None:
        return None

    agent = Puppet(hang=True)
    run = await new_run(store, agent, why_cancelled=shutdown)
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    task.cancel()  # as a job queue does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not set(await types(store)) & TERMINAL


async def test_an_unexplained_cancel_with_a_reason_ends_it_cancelled(store: Fenced) -> None:
    async def aborted() -> str | None:
        return "cancelled from another node"

    agent = Puppet(hang=True)
    run = await new_run(store, agent, why_cancelled=aborted)
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    task.cancel()
    assert (await task).status == "cancelled"
    await ended_once(store, "cancelled")
    record = await store.get("s-1")
    assert record is not None and record.error == "cancelled from another node"


async def test_a_lost_lease_stops_the_run_without_another_write(store: Fenced) -> None:
    lost = asyncio.Event()
    agent = Puppet([RoundStart(session_id="s-1", round=1)], hang=True)
    run = await new_run(store, agent, lease="t", lease_lost=lost)
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    writes = len(store.leases)
    lost.set()
    outcome = await task
    assert outcome.lease_lost and outcome.terminal is None
    assert len(store.leases) == writes  # not even a terminal event


async def test_a_refused_write_stops_the_run_without_a_terminal_event(store: Fenced) -> None:
    run = await new_run(store, Puppet([RoundStart(session_id="s-1", round=1)]), lease="old")
    store.refuse = True
    outcome = await run.run()
    assert outcome.lease_lost and outcome.terminal is None
    assert store.leases == ["old"]  # the first refused write was its last


async def test_resuming_a_session_that_already_ended_writes_nothing(store: Fenced) -> None:
    run = await new_run(store, Puppet([Completed(session_id="s-1")]))
    await run.run()
    again = SessionRun(
        run.record,
        store=store,
        agent_factory=lambda *a, **k: Puppet(),
        config=AgentTemplate(),
        resume=True,
    )
    before = await types(store)
    outcome = await again.run()
    assert outcome.terminal is None and await types(store) == before


async def test_resuming_when_the_record_cannot_be_read_raises_and_writes_nothing(
    store: Fenced, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[bool] = []
    run = await new_run(
        store,
        Puppet([Completed(session_id="s-1")]),
        resume=True,
        on_stopped=lambda: stopped.append(True),
    )

    async def unreachable(session_id: str) -> None:
        raise OSError("the store is unreachable")

    monkeypatch.setattr(store, "get", unreachable)
    with pytest.raises(OSError):
        await run.run()
    assert store.leases == [] and stopped == [True]  # no write; the slot was let go


async def test_resuming_a_session_with_an_empty_log_is_its_first_run(store: Fenced) -> None:
    run = await new_run(store, Puppet([Completed(session_id="s-1")]), resume=True)
    outcome = await run.run()
    assert outcome.status == "completed" and outcome.resumed_from is None
    assert await types(store) == ["session_start", "init", "completed"]
