"""The backends behind one ``ChatModel``: affinity, load, health, and a gate each.

Routing is the pool's one policy. A session's calls go to the backend that
holds its prompt's prefix in cache (its *home*) while that backend is up and has
room; a session without a home, or whose home is down or full while another has
room, goes to the least-loaded backend that is up, which becomes its home.
Every call passes its backend's ``CallLimiter``, so whatever makes the call
(a round, a page summary) counts against that backend's limit.

A failed backend is avoided for a backoff that doubles with each failure in a
row (with jitter), until a health probe or a call succeeds. The pool itself
never retries: ``RetryingModel`` above it does, and its next attempt lands on
another backend because this one is now down.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import (
    CHARS_PER_TOKEN,
    BackendState,
    CallContext,
    ChatModel,
    Message,
    Piece,
)
from deepresearch.llm.limits import CallLimiter, Reading
from deepresearch.llm.signals import BackendSignals

HOMES_KEPT = 10_000  # sessions whose backend the pool remembers
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
LATENCY_WINDOW = 64  # recent calls whose latency a reading summarises


class PoolMember(ChatModel, Protocol):
    """A backend the pool can watch as well as call."""

    async def probe(self) -> bool:
        """Whether it answers now."""
        ...

    async def signals(self) -> BackendSignals | None:
        """Its own load figures, where it reports them."""
        ...


class Backend:
    """One member of the pool, with its gate, health and recent latency."""

    def __init__(self, model: PoolMember, limit: int | None) -> None:
        self.model = model
        self.limiter = CallLimiter(limit)
        self.down_until = 0.0  # monotonic seconds; avoided before then
        self.failures = 0  # in a row
        self.recovered = False  # came back since the last reading
        self.sessions = 0  # sessions whose home it is
        self.signals: BackendSignals | None = None
        self.ttft: float | None = None  # of the latest call, seconds
        self._ttfts: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._gaps: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def up(self, now: float) -> bool:
        return self.failures == 0 or now >= self.down_until

    @property
    def busy(self) -> bool:
        return self.limiter.full or self.limiter.waiting > 0

    def load(self) -> float:
        """Work per unit of room: in-flight and waiting calls (ours and, from its
        metrics, everyone's) over the limit, plus the share of KV cache in use."""
        queued: float = self.limiter.in_flight + self.limiter.waiting
        if self.signals is not None:
            queued += self.signals.waiting
        room = self.limiter.limit or 16
        kv = self.signals.kv_usage if self.signals and self.signals.kv_usage else 0.0
        return queued / room + kv

    def failed(self, now: float) -> None:
        self.failures += 1
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.failures - 1))
        self.down_until = now + backoff * random.uniform(0.8, 1.2)

    def succeeded(self) -> None:
        if self.failures:
            self.recovered = True
        self.failures = 0

    def timed(self, ttft: float, gap: float | None) -> None:
        self.ttft = ttft
        self._ttfts.append(ttft)
        if gap is not None:
            self._gaps.append(gap)

    def reading(self, demand: bool, contexts: tuple[float, ...] = ()) -> Reading:
        """Summarise the calls since the last reading, and start a new window;
        ``contexts``: the prompt sizes of the sessions seated here."""
        calling = self.limiter.seated_calling()
        ttft = statistics.median(self._ttfts) if self._ttfts else None
        gap = statistics.median(self._gaps) if self._gaps else None
        self._ttfts.clear()
        self._gaps.clear()
        wants_room = demand or self.limiter.waiting > 0
        return Reading(
            self.limiter.in_flight, wants_room, self.signals, ttft, gap, contexts, calling
        )


@dataclass
class _Session:
    home: Backend  # holds its prompt's prefix in cache
    age: int  # the order of its first call
    tokens: float = 0.0  # its latest round's prompt, estimated from its length


class BackendPool:
    def __init__(
        self,
        models: Sequence[PoolMember],
        *,
        limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("a pool needs at least one backend")
        self.backends = [Backend(model, limit) for model in models]
        self._clock = clock
        # What the pool remembers of each recent session: its home, and its age.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._arrivals = itertools.count()

    def states(self) -> list[BackendState]:
        now = self._clock()
        states = []
        for backend in self.backends:
            state = backend.model.states()[0]
            signals = backend.signals
            states.append(
                replace(
                    state,
                    healthy=state.healthy if backend.up(now) else False,
                    limit=backend.limiter.limit,
                    in_flight=backend.limiter.in_flight,
                    ttft_ms=None if backend.ttft is None else round(backend.ttft * 1000, 1),
                    waiting=signals.waiting if signals else None,
                    kv_usage=signals.kv_usage if signals else None,
                )
            )
        return states

    def choose(self, session_id: str | None) -> Backend:
        """The backend for a call made on behalf of ``session_id``."""
        now = self._clock()
        up = [backend for backend in self.backends if backend.up(now)]
        if not up:  # all down: try the one due back first rather than fail outright
            up = [min(self.backends, key=lambda backend: backend.down_until)]
        seen = self._sessions.get(session_id) if session_id else None
        home = seen.home if seen else None
        roomy = [backend for backend in up if not backend.busy]
        seated = home is not None and home.limiter.seated(session_id)
        if home is not None and home in up and (seated or not home.busy or not roomy):
            choice = home
        else:
            # Ties (idle backends) go to the one that is home to fewer sessions.
            choice = min(roomy or up, key=lambda backend: (backend.load(), backend.sessions))
        if session_id is not None:
            self._settle(session_id, seen, choice)
        return choice

    def _settle(self, session_id: str, seen: _Session | None, home: Backend) -> None:
        """Record ``home`` as the session's, keeping at most ``HOMES_KEPT`` sessions."""
        if seen is None:
            seen = self._sessions[session_id] = _Session(home, next(self._arrivals))
            home.sessions += 1
            if len(self._sessions) > HOMES_KEPT:
                _, forgotten = self._sessions.popitem(last=False)
                forgotten.home.sessions -= 1
        elif seen.home is not home:
            seen.home.sessions -= 1
            home.sessions += 1
            seen.home = home
        self._sessions.move_to_end(session_id)

    def contexts(self, backend: Backend) -> tuple[float, ...]:
        """The latest prompt size (tokens, estimated) of each session seated on ``backend``."""
        limiter = backend.limiter
        return tuple(
            seen.tokens
            for session_id, seen in self._sessions.items()
            if seen.tokens and limiter.seated(session_id)
        )

    def end_session(self, session_id: str) -> None:
        """The session's seat goes (others waiting at its backend's gate move up) and
        the pool forgets its home."""
        self._sessions.pop(session_id, None)
        for backend in self.backends:
            backend.limiter.unseat(session_id)

    def _priority(self, session_id: str | None) -> float:
        """Order at a full gate: sessions by their first call (older first); a call on
        nobody's behalf by its own arrival."""
        seen = self._sessions.get(session_id) if session_id else None
        return float(seen.age if seen else next(self._arrivals))

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        """Counted by the session's own backend: its tokenizer, and no other's turn."""
        seen = self._sessions.get(call.session_id) if call.session_id else None
        backend = seen.home if seen else self.choose(call.session_id)
        return await backend.model.count_tokens(messages, call=call)

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[Piece, None]:
        backend = self.choose(call.session_id)
        seen = self._sessions.get(call.session_id) if call.session_id else None
        if seen is not None and call.purpose == "round":
            seen.tokens = sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN
        priority = self._priority(call.session_id)
        async with backend.limiter.held(priority, call.session_id):
            sent = self._clock()
            first: float | None = None
            last, pieces = sent, 0
            try:
                async with aclosing(
                    backend.model.stream(messages, settings, stop, call=call, tools=tools)
                ) as reply:
                    async for piece in reply:
                        last = self._clock()
                        first = last if first is None else first
                        pieces += 1
                        yield piece
            except BackendError as exc:
                if exc.retryable:  # a refused request says nothing about the backend
                    backend.failed(self._clock())
                raise
            backend.succeeded()
            if first is not None:
                gap = (last - first) / (pieces - 1) if pieces > 1 else None
                backend.timed(first - sent, gap)

    async def refresh(self) -> None:
        """Probe the backends that are down and due, read the others' metrics."""
        await asyncio.gather(*(self._refresh(backend) for backend in self.backends))

    async def _refresh(self, backend: Backend) -> None:
        now = self._clock()
        if backend.failures:
            if now < backend.down_until:
                return
            if await backend.model.probe():
                backend.succeeded()
            else:
                backend.failed(self._clock())
                return
        backend.signals = await backend.model.signals()
