"""The interface every LLM backend (and every wrapper around one) keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from deepresearch.config import GenerationSettings

# A rough count when the backend cannot tokenize: about 3.5 characters a token
# for English and code, rounded toward overestimating.
CHARS_PER_TOKEN = 3.5


class Message(TypedDict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # Native function calling only: the calls an assistant message made, and the
    # call a tool message answers.
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


@dataclass(frozen=True)
class NativeToolCall:
    """A tool call the backend returned through the chat API's ``tools`` field."""

    id: str
    name: str
    arguments: str  # JSON text, as the backend produced it


@dataclass(frozen=True)
class BackendState:
    """What ``/health`` shows of one backend."""

    url: str
    model: str | None
    healthy: bool | None  # None: not used yet
    last_error: str | None


def estimate_tokens(messages: Sequence[Message]) -> int:
    chars = sum(len(m["content"]) + 8 for m in messages)
    return int(chars / CHARS_PER_TOKEN) + 1


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str | NativeToolCall]:
        """Stream the reply's text in pieces, then any native tool calls.

        ``tools`` (JSON schemas in the chat API's shape) is given only in the
        native function-calling mode. ``BackendError`` when the backend fails.
        """
        ...

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        """The prompt's size in the backend's tokens, or an estimate."""
        ...

    def states(self) -> list[BackendState]:
        """The state of each backend behind this model, for ``/health``."""
        ...
