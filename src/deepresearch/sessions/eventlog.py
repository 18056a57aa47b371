"""The event log: a session's numbered events, appended by its runner and tailed by
its followers, wherever each of them runs.

``tail`` is a blocking read: it returns the events after a sequence number as soon
as there are any, or an empty list once ``timeout`` has passed. On Redis it is one
``XREAD BLOCK``, so a follower on one node sees what a worker on another wrote. In
the single-process store it waits for an in-process signal that each committed
append sends (``AppendSignal``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from deepresearch.sessions.records import SessionChanges, StoredEvent


class EventLog(Protocol):
    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
    ) -> None:
        """Persist events (and record changes) atomically; see ``SessionStore.append``."""

    async def events(self, session_id: str, after: int = 0) -> list[StoredEvent]:
        """The events with ``seq > after``, in order, without waiting."""

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        """The events with ``seq > after``, waiting up to ``timeout`` seconds for the
        first one; an empty list if none came."""


class AppendSignal:
    """Wakes the tails waiting on a session when an append to it has committed."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def watch(self, session_id: str) -> asyncio.Future[None]:
        """A future resolved by the next ``notify`` for this session. Taken before
        reading the log, so an append between the read and the wait is not missed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, set()).add(waiter)
        return waiter

    def forget(self, session_id: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(session_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[session_id]

    def notify(self, session_id: str) -> None:
        for waiter in self._waiters.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    @property
    def waiting(self) -> int:
        """How many tails are waiting (for tests and metrics)."""
        return sum(len(waiters) for waiters in self._waiters.values())


async def tail_by_signal(
    signal: AppendSignal,
    read: Callable[[str, int], Awaitable[list[StoredEvent]]],
    session_id: str,
    after: int,
    timeout: float,
) -> list[StoredEvent]:
    """``tail`` for a store whose appends all happen in this process."""
    waiter = signal.watch(session_id)
    try:
        found = await read(session_id, after)
        if found or timeout <= 0:
            return found
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        return await read(session_id, after) if waiter.done() else []
    finally:
        signal.forget(session_id, waiter)
