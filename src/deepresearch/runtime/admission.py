"""Admission control: a number of slots (resizable live) and a bounded FIFO queue.

One observable object: ``/health`` and ``/metrics`` read its counters, and each
ticket can watch its own queue position change. A freed slot is handed straight
to the head of the queue (no barging), so order is strictly FIFO.

The number of slots may change while sessions run (``resize``: with
``DEEPRESEARCH_MAX_CONCURRENT=auto`` it follows what the backends can take).
Growing hands the new slots to the queue's head at once; shrinking takes slots
back only as their holders finish, never by stopping a running session.

Every session holds one ``Ticket`` from the moment it is admitted until it
ends; ``release(ticket)`` is idempotent and correct in every state, which is
what makes "a slot is released on every path" easy to keep true.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from deepresearch.errors import Overloaded

TicketState = Literal[
    "waiting",  # in the queue
    "holding",  # owns a slot
    "released",  # gave its slot or place back; final
]


class QueueTimeout(Exception):
    """The session waited longer than the queue timeout."""


@dataclass(eq=False)
class Ticket:
    session_id: str
    state: TicketState
    position: int = 0  # place in the queue while waiting, 1 = next; 0 otherwise
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # position or state moved
    granted: asyncio.Event = field(default_factory=asyncio.Event)  # holds a slot now


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.busy = 0
        self._queue: list[Ticket] = []
        self._recent_runs: list[float] = []

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def saturated(self) -> bool:
        """Every slot is busy (the note's ``lock_acquired``)."""
        return self.busy >= self.max_concurrent

    def resize(self, max_concurrent: int) -> None:
        """Change the number of slots; waiting sessions get any that are free now."""
        self.max_concurrent = max(1, max_concurrent)
        while self._queue and self.busy < self.max_concurrent:
            self.busy += 1
            self._grant(self._queue.pop(0))
        self._renumber()

    def _grant(self, ticket: Ticket) -> None:
        ticket.state, ticket.position = "holding", 0
        ticket.changed.set()
        ticket.granted.set()

    def admit(self, session_id: str) -> Ticket:
        """A slot now, or a place in the queue; ``Overloaded`` (nothing taken) when full.

        Synchronous, so no other request can slip between the check and the claim.
        """
        if self.busy < self.max_concurrent and not self._queue:
            self.busy += 1
            return Ticket(session_id, "holding")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(
                f"all {self.max_concurrent} slots are busy and the queue is full "
                f"({len(self._queue)} waiting)",
                retry_after=self.retry_after_seconds(),
            )
        ticket = Ticket(session_id, "waiting", position=len(self._queue) + 1)
        self._queue.append(ticket)
        return ticket

    async def wait_turn(
        self, ticket: Ticket, timeout: float, interval: float = 0.0
    ) -> AsyncIterator[int]:
        """Yield ``ticket``'s queue position when it changes, until it holds a slot.

        At most one position per ``interval`` seconds, always the latest: with
        hundreds waiting, every freed slot moves every waiter, and reporting
        each step would cost work quadratic in the queue's length. The slot
        itself is never held back. ``QueueTimeout`` after ``timeout`` seconds in
        all; the caller releases the ticket (``release`` is idempotent).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reported, reported_at = 0, -math.inf
        while ticket.state == "waiting":
            now = loop.time()
            if now >= deadline:
                raise QueueTimeout(f"no slot became free within {timeout:g} s")
            hold = reported_at + interval - now
            if ticket.position != reported and hold <= 0:
                reported, reported_at = ticket.position, now
                yield reported
                continue
            if ticket.position == reported:
                # Nothing new to say: sleep until something moves.
                ticket.changed.clear()
                event, wake_at = ticket.changed, deadline
            else:
                # News, but too soon to tell it: wake early only for the slot.
                event, wake_at = ticket.granted, min(deadline, now + hold)
            try:
                async with asyncio.timeout_at(wake_at):
                    await event.wait()
            except TimeoutError:
                continue

    def release(self, ticket: Ticket) -> None:
        """Give back whatever ``ticket`` has; a no-op if it was already released."""
        if ticket.state == "waiting":
            self._queue.remove(ticket)
            self._renumber()
        elif ticket.state == "holding":
            if self._queue and self.busy <= self.max_concurrent:
                self._grant(self._queue.pop(0))  # the slot passes straight on: no barging
                self._renumber()
            else:
                self.busy -= 1
        ticket.state = "released"
        ticket.position = 0

    def _renumber(self) -> None:
        for index, waiting in enumerate(self._queue, start=1):
            if waiting.position != index:
                waiting.position = index
                waiting.changed.set()

    def record_run(self, seconds: float) -> None:
        """Remember how long runs take, to estimate ``Retry-After``."""
        self._recent_runs.append(seconds)
        del self._recent_runs[:-50]

    def retry_after_seconds(self) -> int:
        runs = sorted(self._recent_runs)
        typical = runs[len(runs) // 2] if runs else 30.0
        # Roughly how long until the queue has drained by one place.
        return max(1, math.ceil(typical * (len(self._queue) + 1) / self.max_concurrent))
