"""How many model calls one backend may have in flight: the gate and its controller.

``CallLimiter`` is the gate every call to a backend passes (agent rounds and
page summaries alike), resizable while calls wait. ``AdaptiveLimit`` decides
the size from what the backend shows, one reading at a time; it holds no clock
and does no I/O, so its logic is tested with made-up readings.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from deepresearch.llm.signals import BackendSignals


class CallLimiter:
    """A gate with a limit that can change live; ``None`` means no limit.

    Waiters go in order of their ``priority`` (lower first), then of arrival. The pool
    gives each session's calls the session's age: when the backend is full, the
    oldest sessions' calls go first, so a few sessions finish with their prompts still
    cached instead of every session crawling while they evict each other's.

    With ``seats`` on, a call made for a session (its ``holder``) also gives that
    session a *seat*, which it keeps between its calls (while it runs a tool) until
    the pool unseats it (the session ended) or the limit shrinks under it: an idle seat
    counts against the limit like a call, and its holder's next call takes it back
    without waiting. So when more sessions are admitted than the backend can keep in
    cache, the seated ones run to their end with their prefixes cached, and the others
    wait instead of slipping in whenever a seated one is in a tool and evicting it.
    A shrinking limit takes idle seats back from the youngest sessions first.
    """

    def __init__(self, limit: int | None, *, seats: bool = False) -> None:
        self.limit = limit
        self.seats = seats
        self.in_flight = 0
        self._waiters: list[tuple[float, int, str | None, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._calls: dict[str, int] = {}  # holder -> its calls in flight
        self._seated: dict[str, float] = {}  # holder -> its priority (seats on)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle_seats(self) -> int:
        return sum(1 for holder in self._seated if not self._calls.get(holder))

    @property
    def occupied(self) -> int:
        """Calls in flight plus seats held between calls."""
        return self.in_flight + self.idle_seats

    @property
    def full(self) -> bool:
        return self.limit is not None and self.occupied >= self.limit

    def seated(self, holder: str | None) -> bool:
        return holder is not None and holder in self._seated

    def seated_calling(self) -> int:
        """Seated sessions with a call in flight (the others are running tools)."""
        return sum(1 for holder in self._seated if self._calls.get(holder))

    def calling(self, holder: str) -> bool:
        """Whether ``holder`` has a call in flight here."""
        return holder in self._calls

    def holders(self) -> set[str]:
        """Sessions seated here or waiting here."""
        waiting = {holder for _, _, holder, _ in self._waiters if holder is not None}
        return waiting | set(self._seated)

    def _may_enter(self, holder: str | None) -> bool:
        if self.seated(holder) and not self._calls.get(holder or ""):
            return True  # its own idle seat
        return not self.full

    def _enter(self, holder: str | None, priority: float) -> None:
        self.in_flight += 1
        if holder is not None:
            self._calls[holder] = self._calls.get(holder, 0) + 1
            if self.seats:
                self._seated[holder] = priority

    async def acquire(self, priority: float = 0.0, holder: str | None = None) -> None:
        own_seat = self.seated(holder) and not self._calls.get(holder or "")
        if own_seat or (not self._waiters and not self.full):
            self._enter(holder, priority)
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._arrivals), holder, turn)
        bisect.insort(self._waiters, entry, key=lambda waiter: waiter[:2])
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(holder)  # granted just as it was cancelled: pass it on
            elif entry in self._waiters:  # a wake-up in between may have dropped it
                self._waiters.remove(entry)
            raise

    def release(self, holder: str | None = None) -> None:
        self.in_flight -= 1
        if holder is not None:
            left = self._calls.get(holder, 0) - 1
            if left > 0:
                self._calls[holder] = left
            else:
                self._calls.pop(holder, None)
        self._shed()
        self._wake()

    def unseat(self, holder: str) -> None:
        """``holder`` no longer needs its seat (its session ended)."""
        if self._seated.pop(holder, None) is not None:
            self._wake()

    def resize(self, limit: int | None) -> None:
        self.limit = limit
        self._shed()
        self._wake()

    def _shed(self) -> None:
        """Over the limit: take idle seats back, the youngest session's first."""
        if self.limit is None:
            return
        excess = self.occupied - self.limit
        if excess <= 0:
            return
        idle = [h for h in self._seated if not self._calls.get(h)]
        idle.sort(key=lambda holder: self._seated[holder], reverse=True)
        for holder in idle[:excess]:
            del self._seated[holder]

    def _wake(self) -> None:
        """Let in every waiter that may enter now, in order: while there is room the
        first in line, and at a full gate anyone taking back an idle seat of its own."""
        kept = []
        for entry in self._waiters:
            priority, _, holder, turn = entry
            if turn.done():
                continue
            if self._may_enter(holder):
                self._enter(holder, priority)
                turn.set_result(None)
            else:
                kept.append(entry)
        self._waiters = kept

    @asynccontextmanager
    async def held(self, priority: float = 0.0, holder: str | None = None) -> AsyncIterator[None]:
        await self.acquire(priority, holder)
        try:
            yield
        finally:
            self.release(holder)


@dataclass(frozen=True)
class Reading:
    """One look at a backend, taken every control interval."""

    in_flight: int  # our calls on it now
    demand: bool  # calls or sessions are waiting for room
    signals: BackendSignals | None  # vLLM's /metrics, where it has them
    ttft: float | None = None  # median time to first piece of recent calls, seconds
    gap: float | None = None  # median time between pieces of recent calls, seconds
    contexts: tuple[float, ...] = ()  # prompt tokens of each session seated on it
    calling: int = 0  # how many of those are in a model call now (the rest run tools)


@dataclass(frozen=True)
class LimitBounds:
    initial: int = 4  # a new server knows nothing: start low
    minimum: int = 1
    maximum: int = 64


# Backing off: by how much, and the signs that call for it.
BACKOFF = 0.75
KV_FULL = 0.92  # above this much KV cache in use, no more calls
KV_BUSY = 0.8  # above this, a queue at the backend is waiting for memory
WAITING_SHARE = 0.1  # a backend queue longer than this share of the limit is congestion
TTFT_TOLERANCE = 4.0  # times the unloaded time to first piece
GAP_TOLERANCE = 2.5  # times the unloaded time between pieces
BASELINE_DRIFT = 1.01  # an unloaded reading lifts the baseline by at most 1%
# Prefix-cache thrash: the hit rate (by tokens) falls this far below the best seen.
HIT_DROP = 0.25
HIT_WINDOW = 4096  # prompt tokens looked up before a hit rate is judged
HIT_MEMORY = 0.995  # the best rate seen fades by this much a reading
# The share of seated sessions in a model call (not in a tool), smoothed over readings.
IN_CALL_MEMORY = 0.8
IN_CALL_FLOOR = 0.25


class AdaptiveLimit:
    """Additive increase, multiplicative decrease, with a slow start.

    It rises while there is demand and the backend shows headroom: doubling
    until the first sign of congestion (so a new server finds its level within
    a few readings), then one call at a time. It backs off by a quarter when the
    backend pre-empts requests, when its own waiting queue stays long for two
    readings, or, where it exposes no ``/metrics`` (llama.cpp, hosted APIs),
    when time to first piece or the gap between pieces grows well past what the
    backend showed unloaded. After backing off it waits one reading for the
    signals to catch up.
    """

    def __init__(self, bounds: LimitBounds) -> None:
        self.bounds = bounds
        self.limit = max(bounds.minimum, min(bounds.maximum, bounds.initial))
        self.slow_start = True
        self._cooling = False
        self._preemptions: float | None = None
        self._waiting_before = 0.0
        self._ttft_base: float | None = None
        self._gap_base: float | None = None
        self._lookups: tuple[float, float] | None = None  # prefix-cache queries, hits
        self._best_hits = 0.0
        self._in_call = 1.0  # until seen, as if every seated session were in a call

    def restart(self) -> None:
        """The backend came back from an outage: probe upward quickly again."""
        self.slow_start = True
        self._cooling = False
        self._preemptions = None

    def observe(self, reading: Reading) -> int:
        """Take one reading; the new limit."""
        congested, full = self._judge(reading)
        if congested:
            if not self._cooling:
                self.limit = max(self.bounds.minimum, math.floor(self.limit * BACKOFF))
                self.slow_start = False
            self._cooling = not self._cooling
        else:
            self._cooling = False
            if reading.demand and not full:
                grown = self.limit * 2 if self.slow_start else self.limit + 1
                self.limit = min(self.bounds.maximum, grown)
        if reading.contexts:
            share = min(1.0, reading.calling / len(reading.contexts))
            self._in_call = IN_CALL_MEMORY * self._in_call + (1 - IN_CALL_MEMORY) * share
        ceiling = kv_ceiling(reading, max(IN_CALL_FLOOR, self._in_call))
        if ceiling is not None and self.limit > ceiling:
            self.limit = max(self.bounds.minimum, ceiling)
            self.slow_start = False  # the level is known: grow one at a time from here
        return self.limit

    def _judge(self, reading: Reading) -> tuple[bool, bool]:
        """(congested, full): whether to back off, and whether there is no room to grow."""
        signals = reading.signals
        if signals is not None:
            preempted = False
            if signals.preemptions is not None:
                before = self._preemptions
                preempted = before is not None and signals.preemptions > before
                self._preemptions = signals.preemptions
            # A queue behind a burst of prefills drains by itself; one behind a cache that
            # is nearly full does not. Only the second is congestion.
            memory_bound = signals.kv_usage is None or signals.kv_usage >= KV_BUSY
            long_queue = signals.waiting > max(1.0, WAITING_SHARE * self.limit)
            queue_stays = long_queue and self._waiting_before > max(1.0, WAITING_SHARE * self.limit)
            self._waiting_before = signals.waiting
            kv_full = signals.kv_usage is not None and signals.kv_usage >= KV_FULL
            # A falling hit rate is thrash only when the seated sessions' prompts no longer
            # fit the cache; while they do, it is new text (tool results) being prefilled.
            thrashing = self._thrashing(signals) and not _all_fit(signals, reading.contexts)
            congested = preempted or thrashing or (queue_stays and memory_bound)
            return congested, kv_full or (long_queue and memory_bound)
        return self._latency_congested(reading), False

    def _thrashing(self, signals: BackendSignals) -> bool:
        """Whether sessions now evict each other's cached prompts: the prefix-cache hit
        rate over the latest window fell well below the best this backend has shown."""
        if signals.prefix_queries is None or signals.prefix_hits is None:
            return False
        if self._lookups is None:
            self._lookups = (signals.prefix_queries, signals.prefix_hits)
            return False
        queries = signals.prefix_queries - self._lookups[0]
        if queries < HIT_WINDOW:
            return False  # too few lookups yet: let the window grow
        rate = (signals.prefix_hits - self._lookups[1]) / queries
        self._lookups = (signals.prefix_queries, signals.prefix_hits)
        self._best_hits = max(rate, self._best_hits * HIT_MEMORY)
        return rate < self._best_hits - HIT_DROP

    def _latency_congested(self, reading: Reading) -> bool:
        unloaded = reading.in_flight <= max(1, self.bounds.minimum)
        slow = False
        if reading.ttft is not None:
            self._ttft_base = _baseline(self._ttft_base, reading.ttft, unloaded)
            slow |= reading.ttft > TTFT_TOLERANCE * self._ttft_base
        if reading.gap is not None:
            self._gap_base = _baseline(self._gap_base, reading.gap, unloaded)
            slow |= reading.gap > GAP_TOLERANCE * self._gap_base
        return slow


def _all_fit(signals: BackendSignals, contexts: tuple[float, ...]) -> bool:
    """Whether the KV cache holds every seated session's whole prompt at once."""
    return bool(signals.kv_capacity and contexts and sum(contexts) <= signals.kv_capacity)


def kv_ceiling(reading: Reading, in_call: float = 1.0) -> int | None:
    """How many sessions the backend's KV cache holds at the seated sessions' mean
    prompt size, when ``in_call`` of them are in a model call at any time: a session
    running a tool holds no blocks, only cached ones that may be evicted (costing it a
    prefill when it comes back, not a pre-emption). Rounded up: one more session than
    fits whole still overlaps its tool calls and prefills with the others' decoding.
    None when the cache's size or the sessions' prompts are unknown."""
    signals = reading.signals
    if signals is None or not signals.kv_capacity or not reading.contexts:
        return None
    per_session = statistics.fmean(reading.contexts) * in_call
    if per_session <= 0:
        return None
    return max(1, math.ceil(signals.kv_capacity / per_session))


def _baseline(current: float | None, seen: float, unloaded: bool) -> float:
    """The lowest value seen; an unloaded reading above it lifts it slowly (the
    backend's speed may drift), a loaded one never does."""
    if current is None or seen < current:
        return seen
    return min(seen, current * BASELINE_DRIFT) if unloaded else current
