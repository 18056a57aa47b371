"""Where sessions and their event logs are kept: one interface, several backends."""

from deepresearch.sessions.records import (
    ConversationSummary,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)
from deepresearch.sessions.sqlite import SqliteSessionStore
from deepresearch.sessions.store import SessionStore

__all__ = [
    "ConversationSummary",
    "SessionChanges",
    "SessionRecord",
    "SessionStatus",
    "SessionStore",
    "SqliteSessionStore",
    "StoredEvent",
]
