"""Reading sessions and conversations from the store, scoped to the caller: the part
the single process's ``SessionManager`` and the API node's ``DistributedSessions``
share. A caller's ``owner`` (None: every owner) decides what it may see; another
owner's session or conversation reads as absent (``SessionNotFound``)."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deepresearch.agent.conversation import Exchange
from deepresearch.errors import SessionConflict, SessionNotFound
from deepresearch.events import utc_now
from deepresearch.sessions.records import (
    UNFINISHED,
    ConversationSummary,
    SessionRecord,
    SessionStatus,
)
from deepresearch.sessions.store import SessionStore

if TYPE_CHECKING:
    from deepresearch.runtime.manager import SessionRequest


@dataclass(frozen=True)
class Placement:
    """Where a new session goes: its id, and its conversation when it follows up."""

    session_id: str
    conversation_id: str | None = None  # None: it starts a conversation of its own
    turn: int = 1
    history: tuple[Exchange, ...] = ()

    @property
    def conversation(self) -> str:
        return self.conversation_id or self.session_id

    def record(self, request: SessionRequest) -> SessionRecord:
        """The new session's record, queued as of now."""
        return SessionRecord(
            id=self.session_id,
            question=request.question,
            status="queued",
            created_at=utc_now(),
            owner=request.owner,
            on_disconnect=request.on_disconnect,
            conversation_id=self.conversation_id,
            turn=self.turn,
            client=request.client,
            generation={k: v for k, v in request.generation.items() if v is not None},
        )


def busy_message(conversation_id: str) -> str:
    return (
        f"conversation {conversation_id}: the previous question is still being "
        "researched; wait for it to end (or cancel it) before asking a follow-up"
    )


class StoredSessions(ABC):
    """Reads through ``store``; ``_settled`` lets a subclass show outcomes it holds
    that the store has not taken yet."""

    @property
    @abstractmethod
    def store(self) -> SessionStore:
        """The store every read goes through."""

    def _settled(self, record: SessionRecord) -> SessionRecord:
        return record

    async def get(self, session_id: str, owner: str | None) -> SessionRecord:
        record = await self.store.get(session_id)
        if record is None or (owner is not None and record.owner != owner):
            raise SessionNotFound(f"no session {session_id}")
        return self._settled(record)

    async def list_sessions(
        self,
        *,
        limit: int,
        offset: int,
        status: SessionStatus | None,
        owner: str | None,
    ) -> tuple[list[SessionRecord], int]:
        records, total = await self.store.list_sessions(
            limit=limit, offset=offset, status=status, owner=owner
        )
        return [self._settled(record) for record in records], total

    async def conversation(self, conversation_id: str, owner: str | None) -> list[SessionRecord]:
        """A conversation's turns, first first; ``SessionNotFound`` if it is not the caller's."""
        turns = [self._settled(t) for t in await self.store.conversation(conversation_id)]
        if not turns or (owner is not None and turns[0].owner != owner):
            raise SessionNotFound(f"no conversation {conversation_id}")
        return turns

    async def list_conversations(
        self, *, limit: int, offset: int, owner: str | None
    ) -> tuple[list[ConversationSummary], int]:
        return await self.store.list_conversations(limit=limit, offset=offset, owner=owner)

    async def latest_answered(
        self, *, owner: str | None, client: str | None
    ) -> SessionRecord | None:
        return await self.store.latest_answered(owner=owner, client=client)

    async def _place(self, asked: str | None, owner: str | None) -> Placement:
        """A ``session_id`` not in use names the new session; the id of an existing
        session or conversation asks a follow-up in that conversation (the new session
        gets a fresh id), refused while one of its turns is unfinished."""
        if asked is None:
            return Placement(str(uuid.uuid4()))
        earlier = await self.store.get(asked)
        if earlier is None:
            return Placement(asked)
        if owner is not None and earlier.owner != owner:
            raise SessionConflict(f"session {asked} already exists")
        turns = [self._settled(t) for t in await self.store.conversation(earlier.conversation)]
        if any(turn.status in UNFINISHED for turn in turns):
            raise SessionConflict(busy_message(earlier.conversation))
        return Placement(
            str(uuid.uuid4()),
            conversation_id=earlier.conversation,
            turn=max(turn.turn for turn in turns) + 1,
            history=tuple(Exchange(t.question, t.answer) for t in turns if t.answer),
        )
