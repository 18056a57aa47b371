"""Admission control: a number of slots (resizable live) and a bounded, fair queue.

One observable object: ``/health`` and ``/metrics`` read its counters, and each
ticket can watch its own queue position change. A freed slot is handed straight
to the next waiter (no barging: a newcomer never takes a slot a waiter could have).

Fair across keys: each client key has its own FIFO line, and the next slot goes
to the key with the fewest sessions running (ties: the key served longest ago,
then the earliest arrival), so one client's 50 questions wait behind each other
and not in front of everyone else's. With one key (keys off) this is plain FIFO.
A ticket's ``position`` is its place in that order as things stand (who runs
now, who waits), recomputed on every change: the order slots would go in if no
one else arrived. Per-key quotas: at most ``max_running_per_key`` of a key's
sessions hold slots (the rest wait even when slots are free) and at most
``max_queued_per_key`` wait (then ``QuotaExceeded``, 429); 0 means no quota.

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
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from deepresearch.errors import ClientError, Overloaded

TicketState = Literal[
    "waiting",  # in the queue
    "holding",  # owns a slot
    "released",  # gave its slot or place back; final
]


class QueueTimeout(Exception):
    """The session waited longer than the queue timeout."""


class QuotaExceeded(ClientError):
    """This key already has as many sessions waiting as it may."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    session_id: str
    state: TicketState
    position: int = 0  # place in the queue while waiting, 1 = next; 0 otherwise
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # position or state moved
    granted: asyncio.Event = field(default_factory=asyncio.Event)  # holds a slot now
    key: str = ""  # whose it is (the client key's owner id; "" when keys are off)
    arrival: int = 0  # admission order, for FIFO within a key


class Admission:
    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        *,
        max_running_per_key: int = 0,
        max_queued_per_key: int = 0,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_running_per_key = max_running_per_key
        self.max_queued_per_key = max_queued_per_key
        self.busy = 0
        self._lines: dict[str, deque[Ticket]] = {}  # per key, FIFO; no empty lines
        self._running: dict[str, int] = {}  # slots held per key; no zeros
        self._served: dict[str, int] = {}  # when each key last got a slot (a counter)
        self._clock = itertools.count(1)
        self._arrivals = itertools.count(1)
        self._queued = 0
        self._recent_runs: list[float] = []

    @property
    def queued(self) -> int:
        return self._queued

    def running_for(self, key: str) -> int:
        return self._running.get(key, 0)

    def queued_for(self, key: str) -> int:
        line = self._lines.get(key)
        return len(line) if line else 0

    def order(self) -> list[Ticket]:
        """The waiting tickets in the order slots would go to them, as things stand."""
        return self._plan()

    @property
    def saturated(self) -> bool:
        """Every slot is busy (the note's ``lock_acquired``)."""
        return self.busy >= self.max_concurrent

    def resize(self, max_concurrent: int) -> None:
        """Change the number of slots; waiting sessions get any that are free now."""
        self.max_concurrent = max(1, max_concurrent)
        self._fill()

    def _capped(self, key: str, running: int) -> bool:
        cap = self.max_running_per_key
        return cap > 0 and running >= cap

    def _plan(self) -> list[Ticket]:
        """Every waiting ticket in grant order: repeatedly the key with the fewest
        running (counting the grants planned so far), then the key served longest
        ago, then the earliest arrival; a key at its running quota goes last."""
        running = dict(self._running)
        served = dict(self._served)
        clock = itertools.count(next(self._clock) if self._lines else 0)
        heap = [
            (running.get(key, 0), served.get(key, 0), line[0].arrival, key)
            for key, line in self._lines.items()
        ]
        heapq.heapify(heap)
        taken = dict.fromkeys(self._lines, 0)
        order: list[Ticket] = []
        held_back: list[Ticket] = []
        while heap:
            count, _, _, key = heapq.heappop(heap)
            line = self._lines[key]
            if self._capped(key, count):
                held_back.extend(list(line)[taken[key] :])
                continue
            order.append(line[taken[key]])
            taken[key] += 1
            running[key] = count + 1
            served[key] = next(clock)
            if taken[key] < len(line):
                heapq.heappush(heap, (count + 1, served[key], line[taken[key]].arrival, key))
        held_back.sort(key=lambda ticket: ticket.arrival)
        return order + held_back

    def _next(self) -> Ticket | None:
        """The waiter the next free slot goes to (``None``: none may take one)."""
        best: tuple[int, int, int, str] | None = None
        for key, line in self._lines.items():
            count = self._running.get(key, 0)
            if self._capped(key, count):
                continue
            rank = (count, self._served.get(key, 0), line[0].arrival, key)
            if best is None or rank < best:
                best = rank
        return None if best is None else self._lines[best[3]][0]

    def _fill(self) -> None:
        """Grant free slots to waiters in fair order, then renumber the rest."""
        granted = False
        while self.busy < self.max_concurrent:
            ticket = self._next()
            if ticket is None:
                break
            self._dequeue(ticket)
            self._hold(ticket)
            self._grant(ticket)
            granted = True
        if granted or self._queued:
            self._renumber()

    def _hold(self, ticket: Ticket) -> None:
        self.busy += 1
        self._running[ticket.key] = self._running.get(ticket.key, 0) + 1
        self._served[ticket.key] = next(self._clock)

    def _dequeue(self, ticket: Ticket) -> None:
        line = self._lines[ticket.key]
        line.remove(ticket)
        if not line:
            del self._lines[ticket.key]
        self._queued -= 1

    def _grant(self, ticket: Ticket) -> None:
        ticket.state, ticket.position = "holding", 0
        ticket.changed.set()
        ticket.granted.set()

    def admit(self, session_id: str, key: str = "") -> Ticket:
        """A slot now, or a place in the queue; ``Overloaded`` (nothing taken) when the
        queue is full, ``QuotaExceeded`` when this key's share of it is.

        Synchronous, so no other request can slip between the check and the claim.
        """
        ticket = Ticket(session_id, "waiting", key=key, arrival=next(self._arrivals))
        # Free slots while others wait means those others are held by their quota.
        if self.busy < self.max_concurrent and not self._capped(key, self.running_for(key)):
            ticket.state = "holding"
            self._hold(ticket)
            return ticket
        if self._queued >= self.max_queue:
            raise Overloaded(
                f"all {self.max_concurrent} slots are busy and the queue is full "
                f"({self._queued} waiting)",
                retry_after=self.retry_after_seconds(),
            )
        if self.max_queued_per_key and self.queued_for(key) >= self.max_queued_per_key:
            raise QuotaExceeded(
                f"this key already has {self.max_queued_per_key} sessions waiting",
                retry_after=self.retry_after_seconds(),
            )
        self._lines.setdefault(key, deque()).append(ticket)
        self._queued += 1
        self._renumber()
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
        state = ticket.state
        ticket.state = "released"
        ticket.position = 0
        if state == "waiting":
            self._dequeue(ticket)
            self._renumber()
        elif state == "holding":
            self.busy -= 1
            left = self._running[ticket.key] - 1
            if left:
                self._running[ticket.key] = left
            else:
                del self._running[ticket.key]
            self._fill()  # the slot passes straight on: no barging

    def _renumber(self) -> None:
        for index, waiting in enumerate(self._plan(), start=1):
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
        return max(1, math.ceil(typical * (self._queued + 1) / self.max_concurrent))
