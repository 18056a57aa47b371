"""Session ids per owner: a ``user`` key's own names for its sessions.

A client may name a new session (``session_id`` in the body). With keys on, two
keys may choose the same name, and neither may learn that the other did: so a
``user`` key's chosen id ``X`` is kept in the store as ``X:<owner>`` (``owner``
is the key's digest prefix; ``:`` is in no client-chosen id and no UUID; the id
first, so logs that show an id's start tell sessions apart), and the key sees and
uses ``X`` alone. Server-generated ids (UUIDs) are stored as they are. An
``IdSpace`` translates at the server's boundary, both ways: the ids a caller sends
(``resolve``) and every id it is shown (records, events, error messages). An
admin, and everyone when keys are off, uses the store's own ids (``IdSpace(None)``,
the identity): an admin sees a user's chosen id qualified (``X:<owner>``) and
addresses it so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Protocol

from deepresearch.sessions.records import ConversationSummary, SessionRecord, StoredEvent

SEPARATOR = ":"


class Records(Protocol):
    async def get(self, session_id: str) -> SessionRecord | None: ...


@dataclass(frozen=True)
class IdSpace:
    """How one caller names sessions: ``owner`` is a ``user`` key's owner id, or
    ``None`` for the store's own ids (an admin, or keys off)."""

    owner: str | None

    @property
    def _suffix(self) -> str:
        return f"{SEPARATOR}{self.owner}"

    def own(self, public: str) -> str:
        """The store id of ``public`` in this caller's own namespace."""
        return public if self.owner is None else public + self._suffix

    async def resolve(self, store: Records, public: str) -> str:
        """The store id the caller means by ``public``: its own chosen id if it has
        one by that name, else a session of its own stored under ``public`` itself
        (a server-generated id, or one chosen before namespaces), else the name a
        new session of its would take. Another key's session is never the answer,
        so whatever others hold, the caller meets exactly what a fresh id meets."""
        if self.owner is None:
            return public
        own = self.own(public)
        if await store.get(own) is not None:
            return own
        found = await store.get(public)
        if found is not None and found.owner == self.owner:
            return public
        return own

    def public(self, stored: str) -> str:
        """How the caller sees a store id."""
        if self.owner is not None and stored.endswith(self._suffix):
            return stored.removesuffix(self._suffix)
        return stored

    def text(self, message: str) -> str:
        """A message (an error naming a session) with the caller's ids as it knows them."""
        return message if self.owner is None else message.replace(self._suffix, "")

    def record(self, record: SessionRecord) -> SessionRecord:
        if self.owner is None:
            return record
        conversation = record.conversation_id
        return replace(
            record,
            id=self.public(record.id),
            conversation_id=self.public(conversation) if conversation is not None else None,
        )

    def conversation(self, found: ConversationSummary) -> ConversationSummary:
        return replace(found, id=self.public(found.id))

    def event(self, stored: StoredEvent) -> StoredEvent:
        """An event as the caller sees it: its ``session_id`` (and ``session_start``'s
        ``content``, the id again) public. Most events need no change: only those
        of sessions under a chosen id carry the owner at all."""
        if self.owner is None or self._suffix not in stored.data:
            return stored
        event = json.loads(stored.data)
        stored_id = event.get("session_id")
        if not isinstance(stored_id, str):
            return stored
        event["session_id"] = self.public(stored_id)
        if stored.type == "session_start" and event.get("content") == stored_id:
            event["content"] = event["session_id"]
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return replace(stored, data=data)
