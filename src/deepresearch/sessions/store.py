"""The ``SessionStore`` interface. Every backend passes ``tests/sessions/conformance.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from deepresearch.sessions.records import (
    ConversationSummary,
    SessionChanges,
    SessionRecord,
    SessionStatus,
    StoredEvent,
)


class SessionStore(Protocol):
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Flush pending writes and release connections."""

    async def create(self, record: SessionRecord) -> None:
        """Add a new session; ``SessionConflict`` if the id is taken."""

    async def append(
        self,
        session_id: str,
        events: Sequence[StoredEvent],
        changes: SessionChanges | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        """Persist events (and optionally record changes) atomically, in order.

        Returns once they are durable enough to be read back by ``events``. With
        ``lease`` (a token) a store shared by several processes refuses the write
        (``LeaseLost``) unless that token holds the session's lease; a store with a
        single writer (SQLite) accepts and ignores it.
        """

    async def update(self, session_id: str, changes: SessionChanges) -> None:
        """Change fields of a record."""

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: SessionStatus | None = None,
        owner: str | None = None,
    ) -> tuple[list[SessionRecord], int]:
        """Newest first, with the total count matching the filters."""

    async def unfinished(self) -> list[SessionRecord]:
        """Sessions still ``queued`` or ``processing`` (after a crash: interrupted ones)."""

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The session's events with ``seq > after``, in order; at most ``limit``."""

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        """The events with ``seq > after``, waiting up to ``timeout`` seconds for the
        first one (see ``sessions/eventlog.py``); an empty list if none came."""

    async def conversation(self, conversation_id: str) -> list[SessionRecord]:
        """The sessions of a conversation (its turns), first turn first; empty if none."""

    async def list_conversations(
        self, *, limit: int, offset: int = 0, owner: str | None = None
    ) -> tuple[list[ConversationSummary], int]:
        """Conversations by their latest question, newest first, with the total count."""

    async def latest_answered(
        self, *, owner: str | None, client: str | None
    ) -> SessionRecord | None:
        """The newest session with an answer asked by this owner and (when given) from
        this client; what a bare citation number refers to."""

    async def prune(self, *, older_than: datetime, keep: int) -> int:
        """Delete whole conversations: those whose every session has finished and whose
        latest question is older than ``older_than``, and finished ones beyond the
        newest conversations holding ``keep`` sessions; never one with an unfinished
        session. A session with no conversation is a conversation of its own.
        Returns how many sessions were deleted."""
