"""A Hypothesis state machine over the session manager and the real SQLite store:
random submits, progress, completions, crashes, cancels, disconnects, queue timeouts
and write failures (a full disk). Every stream ends with exactly one terminal event,
last; every record ends finished and agrees with it; no slot or place is leaked."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from deepresearch.config import AgentTemplate, Settings
from deepresearch.errors import ClientError, SessionFailure
from deepresearch.events import Completed, Event, RoundStart, parse_event
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.manager import SessionManager, SessionRequest
from deepresearch.runtime.metrics import Metrics
from deepresearch.sessions.records import STATUS_BY_TERMINAL_EVENT
from deepresearch.sessions.sqlite import SqliteSessionStore
from deepresearch.sessions.store import SessionStore
from tests.support import TERMINAL

Step = Event | Exception


class PuppetAgent:
    """Yields what the test pushes to its session's queue."""

    def __init__(self, queue: asyncio.Queue[Step]) -> None:
        self.queue = queue

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        while True:
            step = await self.queue.get()
            if isinstance(step, Exception):
                raise step
            yield step
            if step.type in TERMINAL:
                return


def disk_full() -> None:
    raise sqlite3.OperationalError("database or disk is full")


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="machine-"))
        self.settings = Settings(
            data_dir=self.folder,
            corpus=[],
            search=["local"],
            max_concurrent=2,
            max_queue=4,
            queue_timeout=0.5,
            disconnect_grace=0.0,
        )
        self.store = self.make_store()
        self.admission = Admission(2, 4)
        self.queues: dict[str, asyncio.Queue[Step]] = {}

        def agent(session_id: str, config: AgentTemplate) -> PuppetAgent:
            return PuppetAgent(self.queues.setdefault(session_id, asyncio.Queue()))

        self.manager = SessionManager(
            self.settings, self.store, self.admission, Metrics(self.admission, list), agent
        )
        self.run(self.store.open())
        self.run(self.manager.open())
        self.streams: dict[str, list[str]] = {}
        self.followers: dict[str, asyncio.Task[None]] = {}
        self.count = 0

    def make_store(self) -> SessionStore:
        """The store under test (``tests/sessions`` runs this machine on Redis too)."""
        return SqliteSessionStore(self.folder / "sessions.sqlite")

    def full(self) -> None:
        """The store's fault hook: a write fails as on a full disk."""
        disk_full()

    def run(self, work: object) -> object:
        return self.loop.run_until_complete(work)  # type: ignore[arg-type]

    def breathe(self) -> None:
        """Let the sessions and the store's threads move a little."""
        self.run(asyncio.sleep(0.005))

    def live(self) -> list[str]:
        return [sid for sid, seen in self.streams.items() if not (set(seen) & TERMINAL)]

    def pick_live(self, data: st.DataObject) -> str | None:
        """One of the live sessions, or None. Which are live depends on timing (queue
        timeouts, how far the sessions got in a breath), and Hypothesis needs the same
        draws and the same rules to choose from when it runs a case again: so the draw
        is always one number, whatever is live, and the rules' precondition is only
        that something was submitted (a count of the test's own steps)."""
        index = data.draw(st.integers(min_value=0, max_value=63), label="which live session")
        live = self.live()
        return live[index % len(live)] if live else None

    async def _follow(self, sid: str) -> None:
        async for stored in self.manager.follow(sid):
            if stored is not None:
                self.streams[sid].append(parse_event(stored.data).type)

    @rule(policy=st.sampled_from(["continue", "cancel"]))
    def submit(self, policy: str) -> None:
        self.count += 1
        sid = f"session-{self.count:04d}"
        try:
            self.run(
                self.manager.start(
                    SessionRequest(question="q", session_id=sid, on_disconnect=policy)  # type: ignore[arg-type]
                )
            )
        except ClientError:
            return  # queue full or store unavailable: nothing was created
        self.streams[sid] = []
        self.queues.setdefault(sid, asyncio.Queue())
        self.followers[sid] = self.loop.create_task(self._follow(sid))
        self.breathe()

    @precondition(lambda self: self.count > 0)
    @rule(data=st.data(), what=st.sampled_from(["progress", "complete", "crash"]))
    def agent_acts(self, data: st.DataObject, what: str) -> None:
        sid = self.pick_live(data)
        if sid is None:
            return
        step: Step = {
            "progress": RoundStart(session_id=sid, round=1),
            "complete": Completed(session_id=sid, content="done"),
            "crash": SessionFailure("the backend failed"),
        }[what]
        self.queues[sid].put_nowait(step)
        self.breathe()

    @precondition(lambda self: self.count > 0)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        sid = self.pick_live(data)
        if sid is None:
            return
        with contextlib.suppress(ClientError):  # it had ended meanwhile
            self.run(self.manager.cancel(sid, None, "cancelled by the test"))
        self.breathe()

    @precondition(lambda self: self.count > 0)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        sid = self.pick_live(data)
        if sid is None:
            return
        follower = self.followers[sid]
        follower.cancel()

        async def gone() -> None:
            await asyncio.gather(follower, return_exceptions=True)

        self.run(gone())
        # Reconnect at once from where it was (the policy may have cancelled it meanwhile).
        seen = len(self.streams[sid])

        async def resume() -> None:
            async for stored in self.manager.follow(sid, after=seen):
                if stored is not None:
                    self.streams[sid].append(parse_event(stored.data).type)

        self.followers[sid] = self.loop.create_task(resume())
        self.breathe()

    @rule(full=st.booleans())
    def disk(self, full: bool) -> None:
        self.store.fault = self.full if full else None  # type: ignore[attr-defined]
        self.breathe()

    @rule()
    def wait_a_little(self) -> None:  # queue timeouts happen
        self.run(asyncio.sleep(0.1))

    @invariant()
    def admission_is_bounded(self) -> None:
        assert 0 <= self.admission.busy <= self.admission.max_concurrent
        assert 0 <= self.admission.queued <= self.admission.max_queue

    def teardown(self) -> None:
        try:
            self.store.fault = None  # type: ignore[attr-defined]
            for sid in self.live():
                self.queues[sid].put_nowait(Completed(session_id=sid, content="done"))
            followers = list(self.followers.values())

            async def all_ended() -> None:
                if followers:
                    await asyncio.wait_for(asyncio.gather(*followers), timeout=20)

            self.run(all_ended())
            self.run(self.manager.settle())
            for sid, seen in self.streams.items():
                terminals = [t for t in seen if t in TERMINAL]
                assert len(terminals) == 1 and seen[-1] == terminals[0], (sid, seen)
                record = self.run(self.store.get(sid))
                assert record is not None and record.status == STATUS_BY_TERMINAL_EVENT[seen[-1]]
            assert (self.admission.busy, self.admission.queued) == (0, 0)
        finally:
            self.run(self.manager.close())
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)


SessionMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
test_session_state_machine = SessionMachine.TestCase
