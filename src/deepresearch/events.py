"""The wire events of a research session (contract section 3).

One pydantic model per event type, each with a literal ``type`` discriminator.
The engine builds these; the runtime numbers and stores them; only
``server/sse.py`` turns them into bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utc_now() -> datetime:
    return datetime.now(UTC)


class BaseEvent(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    content: str = ""
    timestamp: datetime = Field(default_factory=utc_now)


class SessionStart(BaseEvent):
    type: Literal["session_start"] = "session_start"
    question: str


class Queued(BaseEvent):
    type: Literal["queued"] = "queued"
    position: int  # 1 = next to get a slot


class Init(BaseEvent):
    type: Literal["init"] = "init"


class Resumed(BaseEvent):
    """The session goes on after an interruption (a server restart, a worker that
    died): its log continues; the rounds up to ``round`` are not run again (0: its
    rounds start again). Anything streamed since that round is void. An addition the
    contract allows (clients ignore types they do not know)."""

    type: Literal["resumed"] = "resumed"
    round: int


class RoundStart(BaseEvent):
    type: Literal["round_start"] = "round_start"
    round: int


class Thinking(BaseEvent):
    """``content`` is the round's reasoning so far; ``delta`` the new piece."""

    type: Literal["thinking"] = "thinking"
    round: int
    delta: str


class ToolCallStart(BaseEvent):
    type: Literal["tool_call_start"] = "tool_call_start"
    round: int
    tool_name: str
    tool_args: dict[str, Any]


class ToolResult(BaseEvent):
    type: Literal["tool_result"] = "tool_result"
    round: int
    tool_name: str
    result: str


class ToolError(BaseEvent):
    type: Literal["tool_error"] = "tool_error"
    round: int
    tool_name: str


class AnswerGeneration(BaseEvent):
    """Sent once, just before the first ``final_answer_chunk``: the answer is being
    written. The note's front ends open the answer's own card on it."""

    type: Literal["answer_generation"] = "answer_generation"


class FinalAnswerChunk(BaseEvent):
    """``content`` is the answer so far; ``delta`` the part new since the last one sent."""

    type: Literal["final_answer_chunk"] = "final_answer_chunk"
    is_streaming: bool = True
    delta: str = ""


class Citation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str  # the marker's number as a string: "1" for [1]
    full_content: str
    preview: str
    source_id: str  # corpus record id, PMID or URL
    url: str
    title: str = ""  # beyond the contract's fields; clients may ignore it


class AnswerData(BaseModel):
    model_config = ConfigDict(frozen=True)

    answer: str
    citations: list[Citation]


class FinalAnswer(BaseEvent):
    type: Literal["final_answer"] = "final_answer"
    answer_data: AnswerData
    dropped_citations: list[int] = []  # markers that named no source, removed from the answer


class Completed(BaseEvent):
    type: Literal["completed"] = "completed"


class Error(BaseEvent):
    type: Literal["error"] = "error"


class Timeout(BaseEvent):
    type: Literal["timeout"] = "timeout"


class NoAnswer(BaseEvent):
    type: Literal["no_answer"] = "no_answer"


class Cancelled(BaseEvent):
    type: Literal["cancelled"] = "cancelled"


Event = Annotated[
    SessionStart
    | Queued
    | Init
    | Resumed
    | RoundStart
    | Thinking
    | ToolCallStart
    | ToolResult
    | ToolError
    | AnswerGeneration
    | FinalAnswerChunk
    | FinalAnswer
    | Completed
    | Error
    | Timeout
    | NoAnswer
    | Cancelled,
    Field(discriminator="type"),
]

TerminalEvent = Completed | Error | Timeout | NoAnswer | Cancelled
TERMINAL_TYPES = frozenset({"completed", "error", "timeout", "no_answer", "cancelled"})

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes) -> Event:
    """Parse one event's JSON (as stored or sent) back into its model."""
    return EVENT_ADAPTER.validate_json(data)
