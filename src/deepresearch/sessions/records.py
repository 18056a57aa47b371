"""The values a session store keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

SessionStatus = Literal[
    "queued",  # waiting for a slot
    "processing",  # holds a slot; the agent runs
    "completed",  # ended with an answer
    "failed",  # ended by an error (backend, tool crash, interrupted by a restart)
    "timeout",  # waited or ran past its limit
    "cancelled",  # cancelled by the client, an operator, or a client that left
    "no_answer",  # spent its budget without an answer
]

UNFINISHED: frozenset[SessionStatus] = frozenset({"queued", "processing"})

# The terminal event type that ends a session with each final status.
STATUS_BY_TERMINAL_EVENT: dict[str, SessionStatus] = {
    "completed": "completed",
    "error": "failed",
    "timeout": "timeout",
    "no_answer": "no_answer",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class StoredEvent:
    """One event as persisted and sent: its sequence number, type and JSON."""

    seq: int  # from 1 within its session
    type: str
    data: str  # the event's JSON, exactly as sent on the wire


@dataclass(frozen=True)
class SessionRecord:
    id: str
    question: str
    status: SessionStatus
    created_at: datetime
    owner: str | None = None  # who may see it when client keys are on
    on_disconnect: str = "grace"
    started_at: datetime | None = None  # when it took a slot
    ended_at: datetime | None = None
    answer: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    last_seq: int = 0
    conversation_id: str | None = None  # None: a conversation of its own (its id)
    turn: int = 1  # its place in the conversation, from 1
    client: str | None = None  # digest of the asking client's address (bare citation numbers)
    # The request's own generation settings (those it set: temperature, max_tokens...),
    # so that a run resumed without a checkpoint uses them, not the server's defaults.
    generation: dict[str, float | int] = field(default_factory=dict)

    @property
    def conversation(self) -> str:
        """The conversation it belongs to; a conversation's id is its first session's."""
        return self.conversation_id or self.id


@dataclass(frozen=True)
class ConversationSummary:
    """One conversation as listed: its turns are sessions sharing ``id``."""

    id: str  # the id of its first session
    owner: str | None
    title: str  # the first question
    created_at: datetime  # when its first question was asked
    updated_at: datetime  # when its latest question was asked
    turns: int
    answered: int  # turns that got an answer
    status: SessionStatus  # the latest turn's


@dataclass(frozen=True)
class SessionChanges:
    """A partial update of a record; ``None`` leaves a field as it is."""

    status: SessionStatus | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    answer: str | None = None
    citations: list[dict[str, Any]] | None = None
    error: str | None = None
