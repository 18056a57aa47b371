"""Several OpenAI-compatible backends behind one ``ChatModel``, with failover.

Calls are spread round-robin; a call that fails before its first piece of text
moves on to the next backend. (Adapting how many calls each backend gets to
what it can take is the next step; this keeps the same interface for it.)
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import BackendState, ChatModel, Message, NativeToolCall


class BackendPool:
    def __init__(self, backends: Sequence[ChatModel]) -> None:
        if not backends:
            raise ValueError("a pool needs at least one backend")
        self._backends = list(backends)
        self._turn = itertools.count()

    def states(self) -> list[BackendState]:
        return [state for backend in self._backends for state in backend.states()]

    def _rotation(self) -> list[ChatModel]:
        start = next(self._turn) % len(self._backends)
        return self._backends[start:] + self._backends[:start]

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return await self._rotation()[0].count_tokens(messages)

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str | NativeToolCall]:
        failures: list[str] = []
        for backend in self._rotation():
            started = False
            try:
                async for piece in backend.stream(messages, settings, stop, tools):
                    started = True
                    yield piece
                return
            except BackendError as exc:
                # Once text has streamed the caller must decide; before, another may serve.
                if started or not exc.retryable:
                    raise
                failures.append(str(exc))
        raise BackendError("every LLM backend failed: " + "; ".join(failures))
