"""The behaviour every event log must have: ``tail`` is a blocking read.

A backend's test module subclasses ``EventLogConformance`` and provides ``log`` (an
opened store), ``writer`` (another handle on the same data, as a worker elsewhere
would hold; the same object where there is only one process) and ``tail_waiting``
(awaits until a ``tail`` call is blocked waiting, so the tests can tell a wake-up
from an immediate answer without sleeping).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from deepresearch.sessions import SessionChanges, SessionStore
from deepresearch.sessions.eventlog import EventLog
from tests.sessions.conformance import events, record

TailWaiting = Callable[[], Awaitable[None]]


class StoreWithLog(SessionStore, EventLog, Protocol):
    """Both stores are event logs too."""


class EventLogConformance:
    async def test_tail_returns_what_is_there_at_once(self, log: StoreWithLog) -> None:
        await log.create(record("s-1"))
        await log.append("s-1", events(1, 3))
        assert [e.seq for e in await log.tail("s-1", after=0, timeout=30)] == [1, 2, 3]
        assert [e.seq for e in await log.tail("s-1", after=2, timeout=30)] == [3]

    async def test_tail_wakes_when_another_writer_appends(
        self, log: StoreWithLog, writer: StoreWithLog, tail_waiting: TailWaiting
    ) -> None:
        await writer.create(record("s-1"))
        await writer.append("s-1", events(1, 2))
        waiting = asyncio.create_task(log.tail("s-1", after=2, timeout=30))
        await tail_waiting()
        assert not waiting.done()
        await writer.append("s-1", events(3, 4, "completed"), SessionChanges(status="completed"))
        got = await waiting
        assert [(e.seq, e.type) for e in got] == [(3, "completed"), (4, "completed")]

    async def test_tail_gives_up_empty_after_its_timeout(self, log: StoreWithLog) -> None:
        await log.create(record("s-1"))
        await log.append("s-1", events(1, 1))
        assert await log.tail("s-1", after=1, timeout=0.05) == []
        assert await log.tail("s-1", after=1, timeout=0) == []

    async def test_a_tail_ignores_other_sessions(
        self, log: StoreWithLog, writer: StoreWithLog, tail_waiting: TailWaiting
    ) -> None:
        await writer.create(record("mine"))
        await writer.create(record("other"))
        waiting = asyncio.create_task(log.tail("mine", after=0, timeout=30))
        await tail_waiting()
        await writer.append("other", events(1, 5))
        await writer.append("mine", events(1, 1))
        assert [e.seq for e in await waiting] == [1]

    async def test_a_cancelled_tail_leaves_the_log_usable(
        self, log: StoreWithLog, writer: StoreWithLog, tail_waiting: TailWaiting
    ) -> None:
        await writer.create(record("s-1"))
        waiting = asyncio.create_task(log.tail("s-1", after=0, timeout=30))
        await tail_waiting()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await writer.append("s-1", events(1, 2))
        assert [e.seq for e in await log.tail("s-1", after=0, timeout=30)] == [1, 2]
