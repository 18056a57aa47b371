"""The one retry policy for model calls: a budget per call, backoff with jitter.

Nothing else retries a model call (not the pool, not the agent), so the cost
of a dead backend is exactly the budget. A failure before the first piece is
retried unseen. A failure part-way is retried from the same budget, after a
``StartOver`` piece tells the listener to drop the partial reply: text already
streamed cannot be taken back, only declared void. A refused request (a 4xx
other than 408/429) is never retried: it would be refused again.

Why not stamina or tenacity: both retry a call or a block; this retries a
stream that has yielded pieces, and a block that yields from inside a retry
context meets the consumer's ``aclose`` and cancellation there. The loop is
ten lines and the backoff is the "full jitter" rule.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import (
    BackendState,
    CallContext,
    ChatModel,
    Message,
    Piece,
    StartOver,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # in all, the first included
    total_seconds: float = 600.0  # no new attempt starts after this long
    first_backoff: float = 0.25
    max_backoff: float = 8.0

    def backoff(self, failures: int) -> float:
        """Full jitter: anywhere up to the exponential step, so retries spread out."""
        return random.uniform(0, min(self.max_backoff, self.first_backoff * 2 ** (failures - 1)))


class RetryingModel:
    def __init__(
        self,
        inner: ChatModel,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self._clock = clock

    def states(self) -> list[BackendState]:
        return self.inner.states()

    def end_session(self, session_id: str) -> None:
        self.inner.end_session(session_id)

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        return await self.inner.count_tokens(messages, call=call)

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[Piece, None]:
        deadline = self._clock() + self.policy.total_seconds
        for attempt in range(1, self.policy.attempts + 1):
            started = False
            try:
                async with aclosing(
                    self.inner.stream(messages, settings, stop, call=call, tools=tools)
                ) as pieces:
                    async for piece in pieces:
                        started = True
                        yield piece
                return
            except BackendError as exc:
                pause = self.policy.backoff(attempt)
                last = attempt == self.policy.attempts
                if last or not exc.retryable or self._clock() + pause > deadline:
                    raise
                tag = (call.session_id or "-")[:8]
                log.warning("[session %s] model call failed (%s); retrying", tag, exc)
                if started:
                    yield StartOver(str(exc))
            await asyncio.sleep(pause)
