"""Retries with backoff around any ``ChatModel``, keeping its shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import BackendState, ChatModel, Message, NativeToolCall


class RetryingModel:
    """Retries a completion that failed before its first piece of text.

    Once text has streamed, a failure is passed on: retrying then would repeat
    text the listener has already seen.
    """

    def __init__(self, inner: ChatModel, retries: int = 2, backoff: float = 0.5) -> None:
        self._inner = inner
        self._retries = retries
        self._backoff = backoff

    def states(self) -> list[BackendState]:
        return self._inner.states()

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return await self._inner.count_tokens(messages)

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str | NativeToolCall]:
        for attempt in range(self._retries + 1):
            started = False
            try:
                async for piece in self._inner.stream(messages, settings, stop, tools):
                    started = True
                    yield piece
                return
            except BackendError as exc:
                if started or attempt == self._retries or not exc.retryable:
                    raise
            await asyncio.sleep(self._backoff * 2**attempt)
