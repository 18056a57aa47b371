"""How many model calls one backend may have in flight: the gate and its controller.

``CallLimiter`` is the gate every call to a backend passes (agent rounds and
page summaries alike), resizable while calls wait. ``AdaptiveLimit`` decides
the size from what the backend shows, one reading at a time; it holds no clock
and does no I/O, so its logic is tested with made-up readings.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
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
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_flight >= self.limit

    async def acquire(self, priority: float = 0.0) -> None:
        if not self._waiters and not self.full:
            self.in_flight += 1
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._arrivals), turn)
        heapq.heappush(self._waiters, entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # granted just as it was cancelled: pass it on
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def resize(self, limit: int | None) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and not self.full:
            _, _, turn = heapq.heappop(self._waiters)
            if not turn.done():
                self.in_flight += 1
                turn.set_result(None)

    @asynccontextmanager
    async def held(self, priority: float = 0.0) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


@dataclass(frozen=True)
class Reading:
    """One look at a backend, taken every control interval."""

    in_flight: int  # our calls on it now
    demand: bool  # calls or sessions are waiting for room
    signals: BackendSignals | None  # vLLM's /metrics, where it has them
    ttft: float | None = None  # median time to first piece of recent calls, seconds
    gap: float | None = None  # median time between pieces of recent calls, seconds


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
            thrashing = self._thrashing(signals)
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


def _baseline(current: float | None, seen: float, unloaded: bool) -> float:
    """The lowest value seen; an unloaded reading above it lifts it slowly (the
    backend's speed may drift), a loaded one never does."""
    if current is None or seen < current:
        return seen
    return min(seen, current * BASELINE_DRIFT) if unloaded else current
