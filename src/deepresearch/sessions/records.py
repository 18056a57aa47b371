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


@dataclass(frozen=True)
class SessionChanges:
    """A partial update of a record; ``None`` leaves a field as it is."""

    status: SessionStatus | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    answer: str | None = None
    citations: list[dict[str, Any]] | None = None
    error: str | None = None
