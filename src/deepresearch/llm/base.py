"""The interface every LLM backend (and every wrapper around one) keeps."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

from deepresearch.config import GenerationSettings

# A rough count when the backend cannot tokenize: about 3.5 characters a token
# for English and code, rounded toward overestimating.
CHARS_PER_TOKEN = 3.5

CallPurpose = Literal[
    "round",  # one ReAct round of the agent
    "summary",  # visit's reading of one page
    "count",  # a prompt's size in tokens
]


class Message(TypedDict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # Native function calling only: the calls an assistant message made, and the
    # call a tool message answers.
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


@dataclass(frozen=True)
class CallContext:
    """Whose model call this is: routing, limits and metrics read it."""

    session_id: str | None  # None: on nobody's behalf (a probe, a test)
    purpose: CallPurpose


@dataclass(frozen=True)
class NativeToolCall:
    """A tool call the backend returned through the chat API's ``tools`` field."""

    id: str
    name: str
    arguments: str  # JSON text, as the backend produced it


@dataclass(frozen=True)
class StartOver:
    """The reply streamed so far is void: the call failed part-way and is being
    asked again. Whoever collects the pieces drops what it has and starts afresh."""

    reason: str


Piece = str | NativeToolCall | StartOver


@dataclass(frozen=True)
class BackendState:
    """What ``/health`` shows of one backend: no credentials, ever."""

    url: str
    model: str | None
    healthy: bool | None  # None: not used yet
    last_error: str | None
    limit: int | None = None  # model calls it may have in flight; None: no limit
    in_flight: int = 0
    ttft_ms: float | None = None  # recent time to the first piece
    waiting: float | None = None  # its own queue (vLLM's num_requests_waiting)
    kv_usage: float | None = None  # 0..1, where the backend reports it


def public_url(url: str) -> str:
    """``url`` without user name, password, query or fragment: safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def estimate_tokens(messages: Sequence[Message]) -> int:
    chars = sum(len(m["content"]) + 8 for m in messages)
    return int(chars / CHARS_PER_TOKEN) + 1


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[Piece, None]:
        """Stream the reply's text in pieces, then any native tool calls.

        ``tools`` (JSON schemas in the chat API's shape) is given only in the
        native function-calling mode. ``BackendError`` when the backend fails.
        Closing the iterator (``aclosing``) aborts the backend request at once.
        """
        ...

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        """The prompt's size in the backend's tokens, or an estimate."""
        ...

    def states(self) -> list[BackendState]:
        """The state of each backend behind this model, for ``/health``."""
        ...

    def end_session(self, session_id: str) -> None:
        """``session_id`` makes no more calls here (it ended, or went to another
        process): whatever is kept for it (its place at a backend's gate) goes."""
        ...
