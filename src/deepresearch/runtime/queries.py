"""Reading sessions and conversations from the store, scoped to the caller: the part
the single process's ``SessionManager`` and the API node's ``DistributedSessions``
share. A caller's ``owner`` (None: every owner) decides what it may see; another
owner's session or conversation reads as absent (``SessionNotFound``)."""

from __future__ import annotations

from deepresearch.errors import SessionNotFound
from deepresearch.sessions.records import ConversationSummary, SessionRecord, SessionStatus
from deepresearch.sessions.store import SessionStore


class StoredSessions:
    """Reads through ``store``; ``_settled`` lets a subclass show outcomes it holds
    that the store has not taken yet."""

    @property
    def store(self) -> SessionStore:
        raise NotImplementedError

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
