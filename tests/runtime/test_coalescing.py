"""The runner's coalescing of streamed text, over the real SQLite store: text rows are
held and stored together, with the next other event, after a window, at the end; the
numbers stay contiguous and follow the store; a failed write stores none of them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

import pytest

from deepresearch.agent.base import AgentState
from deepresearch.config import AgentTemplate
from deepresearch.events import Completed, Event, RoundStart, Thinking, ToolCallStart, utc_now
from deepresearch.runtime.follower import Follower, LocalTail
from deepresearch.runtime.runner import SessionRun
from deepresearch.sessions.checkpoints import SqliteCheckpointStore
from deepresearch.sessions.records import SessionChanges, SessionRecord, StoredEvent
from tests.runtime.test_runner import Fenced, Puppet, ended_once, new_run, types

PIECE = "metformin first; "


class Batches(Fenced):
    """The real store, remembering the event types of each append that stored."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []

    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        # Recorded before the write: a follower woken by the write may look at once.
        batch = [row.type for row in events]
        self.batches.append(batch)
        try:
            await super().append(session_id, events, changes, lease=lease)
        except BaseException:
            if self.batches and self.batches[-1] is batch:
                self.batches.pop()
            raise


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Batches]:
    store = Batches(tmp_path / "sessions.sqlite")
    await store.open()
    yield store
    await store.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def thinking(text: str, round_: int = 1) -> Thinking:
    return Thinking(session_id="s-1", round=round_, content=text, delta="")


def tool_call() -> ToolCallStart:
    return ToolCallStart(session_id="s-1", round=1, tool_name="search", tool_args={"q": "x"})


async def texts(store: Fenced) -> str:
    """The round's text as the stored delta rows spell it."""
    rows = await store.events("s-1")
    return "".join(json.loads(r.data)["delta"] for r in rows if r.type == "thinking")


async def test_a_burst_of_text_in_a_window_makes_few_appends(store: Batches) -> None:
    """1,000 pieces over 10 s of a fake clock, window 1 s: one append for the round's
    first text, then about one a second, not one per piece; every piece stored, in
    order, under contiguous numbers."""
    clock = FakeClock()

    class Burst(Puppet):
        async def run(self, question: str) -> AsyncGenerator[Event, None]:
            yield RoundStart(session_id="s-1", round=1)
            text = ""
            for _ in range(1000):
                text += PIECE
                yield thinking(text)
                clock.now += 0.01
            yield tool_call()
            await asyncio.Event().wait()

    run = await new_run(store, Burst(), coalesce=1.0, clock=clock)
    task = asyncio.create_task(run.run())
    tool = await store.tail("s-1", after=0, timeout=30)
    while tool[-1].type != "tool_call_start":
        tool = await store.tail("s-1", after=tool[-1].seq, timeout=30)
    text_appends = [b for b in store.batches if "thinking" in b]
    assert 10 <= len(text_appends) <= 12  # not 1,000
    assert text_appends[0] == ["thinking"]  # the round's first text, at once
    assert sum(b.count("thinking") for b in store.batches) == 1000
    assert await texts(store) == PIECE * 1000
    assert run.cancel("done")
    await task
    await ended_once(store, "cancelled")


async def test_another_event_stores_the_text_held_before_it_in_one_append(
    store: Batches,
) -> None:
    steps: list[Event | AgentState | Exception] = [
        RoundStart(session_id="s-1", round=1),
        thinking("a"),
        thinking("ab"),
        thinking("abc"),
        tool_call(),
    ]
    run = await new_run(store, Puppet(steps), coalesce=60.0, clock=FakeClock())
    assert (await run.run()).status == "failed"  # the puppet ends without an outcome
    assert store.batches[2:] == [
        ["round_start"],
        ["thinking"],
        ["thinking", "thinking", "tool_call_start"],
        ["error"],
    ]
    assert await types(store) == [
        "session_start",
        "init",
        "round_start",
        "thinking",
        "thinking",
        "thinking",
        "tool_call_start",
        "error",
    ]
    assert await texts(store) == "abc"
    await ended_once(store, "error")


async def test_held_text_is_stored_after_the_window_when_nothing_else_comes(
    store: Batches,
) -> None:
    """The model goes quiet after some text: the timer stores it (read with the log's
    blocking tail, as a follower would)."""
    agent = Puppet([RoundStart(session_id="s-1", round=1), thinking("a"), thinking("ab")])
    agent.hang = True
    run = await new_run(store, agent, coalesce=0.05)
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    seen: list[StoredEvent] = []
    while not seen or seen[-1].type != "thinking" or json.loads(seen[-1].data)["delta"] != "b":
        seen += await store.tail("s-1", after=seen[-1].seq if seen else 0, timeout=30)
    assert store.batches[-1] == ["thinking"]  # on its own: no other event came
    assert run.cancel("done")
    await task
    await ended_once(store, "cancelled")


async def test_a_failed_write_stores_none_of_the_text_held_and_ends_once(
    store: Batches,
) -> None:
    unsettled: list[tuple[str, StoredEvent, SessionChanges]] = []
    steps: list[Event | AgentState | Exception] = [
        RoundStart(session_id="s-1", round=1),
        thinking("a"),
        thinking("ab"),
        thinking("abc"),
        tool_call(),
    ]
    run = await new_run(
        store,
        Puppet(steps),
        coalesce=60.0,
        clock=FakeClock(),
        on_unsettled=lambda *a: unsettled.append(a),
    )
    writes = 0

    def full_after_four() -> None:  # session_start, init, round_start, the first text
        nonlocal writes
        writes += 1
        if writes > 4:
            raise sqlite3.OperationalError("database or disk is full")

    store.fault = full_after_four
    outcome = await run.run()
    assert outcome.status == "failed" and not outcome.stored
    # Nothing half-written: the held rows and the tool event went nowhere.
    assert await types(store) == ["session_start", "init", "round_start", "thinking"]
    assert await texts(store) == "a"
    _, terminal, changes = unsettled[0]
    assert terminal.type == "error" and terminal.seq == 5  # right after the stored ones
    assert "could not save" in json.loads(terminal.data)["content"]
    store.fault = None
    await store.append("s-1", [terminal], changes)
    await ended_once(store, "error")


async def test_a_failed_timed_write_ends_the_session_at_its_next_write(store: Batches) -> None:
    refused = asyncio.Event()
    go_on = asyncio.Event()

    class Slow(Puppet):
        async def run(self, question: str) -> AsyncGenerator[Event, None]:
            yield RoundStart(session_id="s-1", round=1)
            yield thinking("a")
            yield thinking("ab")  # held, then refused by the timer's write
            await go_on.wait()
            yield tool_call()

    def full() -> None:
        refused.set()
        raise sqlite3.OperationalError("database or disk is full")

    run = await new_run(store, Slow(), coalesce=0.05)
    task = asyncio.create_task(run.run())
    while len(store.batches) < 4:  # up to the round's first text
        await store.tail("s-1", after=len(store.batches), timeout=30)
    store.fault = full
    await refused.wait()
    store.fault = None
    go_on.set()
    outcome = await task
    assert outcome.status == "failed" and outcome.stored
    assert await types(store) == ["session_start", "init", "round_start", "thinking", "error"]
    await ended_once(store, "error")


async def test_cancel_stores_the_held_text_with_the_cancelled_event(store: Batches) -> None:
    """Decided: a cancel keeps the text produced so far (it goes first, in the same
    append as ``cancelled``), as it did when every row was stored at once."""
    agent = Puppet([RoundStart(session_id="s-1", round=1), thinking("a"), thinking("ab")])
    agent.hang = True
    run = await new_run(store, agent, coalesce=60.0, clock=FakeClock())
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    assert run.cancel("cancelled by the client")
    assert (await task).status == "cancelled"
    assert store.batches[-1] == ["thinking", "cancelled"]
    assert await texts(store) == "ab"
    await ended_once(store, "cancelled")


async def test_hand_back_drops_the_held_text_and_the_checkpoint_names_stored_rows(
    store: Batches, tmp_path: Path
) -> None:
    """Decided: a run handed back drops its held text (the run that goes on from the
    checkpoint streams that round again). A checkpoint is taken after the rows
    before it are stored: its ``last_seq`` names them."""
    checkpoints = SqliteCheckpointStore(tmp_path / "sessions.sqlite")
    await checkpoints.open()
    try:
        state = AgentState(round=1, messages=[])
        steps: list[Event | AgentState | Exception] = [
            RoundStart(session_id="s-1", round=1),
            thinking("a"),
            thinking("ab"),
            state,
            RoundStart(session_id="s-1", round=2),
            thinking("c", 2),
            thinking("cd", 2),
        ]
        agent = Puppet(steps, hang=True)
        run = await new_run(store, agent, checkpoints=checkpoints, coalesce=60.0, clock=FakeClock())
        task = asyncio.create_task(run.run())
        await agent.waiting.wait()
        saved = await checkpoints.load("s-1")
        assert saved is not None and saved.last_seq == 5  # round 1's text, both rows
        assert run.hand_back()
        outcome = await task
        assert outcome.handed_back and outcome.terminal is None
        kinds = await types(store)
        assert kinds[-2:] == ["round_start", "thinking"]  # "cd" dropped, never written
        record = await store.get("s-1")
        assert record is not None and record.last_seq == len(kinds) == 7
        assert record.status == "processing"
    finally:
        await checkpoints.close()


async def test_a_lost_lease_drops_the_held_text(store: Batches) -> None:
    lost = asyncio.Event()
    agent = Puppet([RoundStart(session_id="s-1", round=1), thinking("a"), thinking("ab")])
    agent.hang = True
    run = await new_run(store, agent, lease="t", lease_lost=lost, clock=FakeClock())
    task = asyncio.create_task(run.run())
    await agent.waiting.wait()
    writes = len(store.leases)
    lost.set()
    assert (await task).lease_lost
    assert len(store.leases) == writes and await texts(store) == "a"


async def test_a_live_follower_and_a_replay_see_the_same_events(store: Batches) -> None:
    """Coalesced rows reach a live follower (through ``LocalTail``, as in one process)
    in batches; what it sends equals a replay of the stored log."""
    clock = FakeClock()

    class Talker(Puppet):
        async def run(self, question: str) -> AsyncGenerator[Event, None]:
            for round_ in (1, 2):
                yield RoundStart(session_id="s-1", round=round_)
                text = ""
                for _ in range(300):
                    text += PIECE
                    yield Thinking(session_id="s-1", round=round_, content=text, delta=PIECE)
                    clock.now += 0.02
                yield tool_call()
            yield Completed(session_id="s-1", content="done")

    local = LocalTail(store)
    local.open("s-1")
    run = await new_run(
        store, Talker(), coalesce=1.0, clock=clock, on_event=lambda row: local.add("s-1", row)
    )

    async def running(_: str) -> bool:
        return run.terminal is None

    async def follow() -> list[StoredEvent]:
        follower = Follower(local, running=running)
        return [e async for e in follower.follow("s-1") if e is not None]

    following = asyncio.create_task(follow())
    await run.run()
    local.close("s-1")
    live = await following
    replay = [e async for e in Follower(store).follow("s-1") if e is not None]
    assert live[-1].type == "completed"
    assert [(e.seq, e.type, e.data) for e in replay] == [(e.seq, e.type, e.data) for e in live]
    assert len([b for b in store.batches if "thinking" in b]) <= 16  # not 600


async def test_the_end_waits_for_a_timed_write_under_way_and_a_late_cancel_changes_nothing(
    tmp_path: Path,
) -> None:
    """The agent ends while the timer's write is still in the store: the run waits for
    it (its row is stored before the terminal event, numbers contiguous); a cancel
    arriving then is refused and a raw task cancel does not escape the run."""
    writing = asyncio.Event()
    release = asyncio.Event()
    settling = asyncio.Event()

    class Slow(Batches):
        async def append(
            self,
            session_id: str,
            events: Sequence[StoredEvent],
            changes: SessionChanges | None = None,
            *,
            lease: str | None = None,
        ) -> None:
            if json.loads(events[0].data).get("delta") == "b":  # the timer's write
                writing.set()
                await release.wait()
            await super().append(session_id, events, changes, lease=lease)

    class Finisher(Puppet):
        async def run(self, question: str) -> AsyncGenerator[Event, None]:
            yield RoundStart(session_id="s-1", round=1)
            yield thinking("a")
            yield thinking("ab")
            await writing.wait()
            yield Completed(session_id="s-1", content="done")

    class Watched(SessionRun):
        async def _stop_timer(self) -> None:
            settling.set()
            await super()._stop_timer()

    slow = Slow(tmp_path / "slow.sqlite")
    await slow.open()
    try:
        record = SessionRecord(id="s-1", question="q", status="queued", created_at=utc_now())
        await slow.create(record)
        run = Watched(
            record,
            store=slow,
            agent_factory=lambda *_, **__: Finisher(),
            config=AgentTemplate(),
            coalesce=0.01,
        )
        task = asyncio.create_task(run.run())
        await settling.wait()  # the agent is done; the timer's write is not
        assert not run.cancel("too late")
        task.cancel()  # as a job queue might, at the same moment
        release.set()
        outcome = await task
        assert outcome.status == "completed" and outcome.stored
        assert await types(slow) == [
            "session_start",
            "init",
            "round_start",
            "thinking",
            "thinking",
            "completed",
        ]
        await ended_once(slow, "completed")
    finally:
        await slow.close()
