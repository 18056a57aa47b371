"""The interface every LLM backend (and every wrapper around one) keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

from deepresearch.config import GenerationSettings


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class BackendState:
    """What ``/health`` shows of one backend."""

    url: str
    model: str | None
    healthy: bool | None  # None: not used yet
    last_error: str | None


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
    ) -> AsyncIterator[str]:
        """Stream the completion's text in pieces; ``BackendError`` when it fails."""
        ...

    def states(self) -> list[BackendState]:
        """The state of each backend behind this model, for ``/health``."""
        ...
