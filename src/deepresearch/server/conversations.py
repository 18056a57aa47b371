"""Conversations, and the routes the note's latest front end calls for them.

A conversation is a series of research sessions (its turns); its id is its first
session's. ``POST /chat/stream`` with the id of a conversation or one of its
sessions asks a follow-up (``runtime/manager.py``). The note's ``/api/sessions*``
routes are views of the same conversations, and ``/citation/{id}`` resolves a
citation number against the caller's own sessions only.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from deepresearch.errors import SessionNotFound
from deepresearch.events import utc_now
from deepresearch.runtime.ids import IdSpace
from deepresearch.server.deps import Ids, Owner, Svc, client_of
from deepresearch.server.limits import MAX_OFFSET
from deepresearch.server.openapi import ERROR_RESPONSES
from deepresearch.server.views import conversation, conversation_summary
from deepresearch.sessions.records import SessionRecord

router = APIRouter(responses=ERROR_RESPONSES)

# "7" (a bare number, as the note's front end sends it) or "SESSION_ID:7"; an admin's
# SESSION_ID may be a user's chosen id as the store keeps it, "<id>:<owner>".
CITATION_ID = re.compile(
    r"(?:(?P<session>[A-Za-z0-9][A-Za-z0-9_-]{7,63}(?::[0-9a-f]{16})?):)?(?P<number>[0-9]{1,6})"
)


async def turns_of(svc: Svc, some_id: str, who: str | None, ids: IdSpace) -> list[SessionRecord]:
    """A conversation's turns by its id or by the id of any of its sessions, as the
    caller sees them."""
    stored_id = await ids.resolve(svc.manager.store, some_id)
    try:
        turns = await svc.manager.conversation(stored_id, who)
    except SessionNotFound:
        record = await svc.manager.get(stored_id, who)
        turns = await svc.manager.conversation(record.conversation, who)
    return [ids.record(turn) for turn in turns]


@router.get("/conversations")
async def list_conversations(
    svc: Svc,
    who: Owner,
    ids: Ids,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    found, total = await svc.manager.list_conversations(limit=limit, offset=offset, owner=who)
    return {
        "conversations": [conversation_summary(ids.conversation(c)) for c in found],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, svc: Svc, who: Owner, ids: Ids) -> dict[str, Any]:
    return conversation(await turns_of(svc, conversation_id, who, ids))


# -- the note's routes ------------------------------------------------------------------


@router.get("/api/sessions/new")
async def new_note_session(who: Owner) -> dict[str, str]:
    """A fresh conversation id. Nothing is stored: the first question posted with it
    starts the conversation (an id not in use names the new session)."""
    return {"session_id": str(uuid.uuid4()), "created_at": utc_now().isoformat()}


@router.get("/api/sessions")
async def list_note_sessions(
    svc: Svc, who: Owner, ids: Ids, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    found, total = await svc.manager.list_conversations(limit=limit, offset=0, owner=who)
    return {
        "sessions": [
            {
                "session_id": ids.public(c.id),
                "created_at": c.created_at.isoformat(),
                "message_count": c.turns + c.answered,
                "title": c.title,
            }
            for c in found
        ],
        "total": total,
    }


@router.get("/api/sessions/{session_id}")
async def get_note_session(session_id: str, svc: Svc, who: Owner, ids: Ids) -> dict[str, Any]:
    turns = await turns_of(svc, session_id, who, ids)
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.question})
        if turn.answer is not None:
            messages.append({"role": "assistant", "content": turn.answer})
    return {
        "session_id": turns[0].conversation,
        "created_at": turns[0].created_at.isoformat(),
        "messages": messages,
    }


@router.get("/citation/{citation_id}")
async def citation(
    citation_id: str,
    request: Request,
    svc: Svc,
    who: Owner,
    ids: Ids,
    session_id: str | None = None,
) -> JSONResponse:
    """A cited source's full text. ``SESSION:N`` (or ``?session_id=``) names the session;
    a bare ``N`` means the caller's newest answered session: the key's when keys are
    on, else the one asked from the caller's address. Never another caller's."""
    match = CITATION_ID.fullmatch(citation_id)
    if match is None:
        return JSONResponse(
            status_code=422,
            content={
                "error": "invalid request: citation_id: a citation number, or SESSION_ID:NUMBER",
                "fields": {"citation_id": "a citation number, or SESSION_ID:NUMBER"},
            },
        )
    number = match.group("number")
    named = match.group("session") or session_id
    if named is not None:
        stored_id = await ids.resolve(svc.manager.store, named)
        record: SessionRecord | None = await svc.manager.get(stored_id, who)
    else:
        client = None if who is not None else client_of(request)
        # No key and no address (a Unix socket): nothing tells this caller from another.
        anonymous = who is None and client is None
        record = None if anonymous else await svc.manager.latest_answered(owner=who, client=client)
    cited = next(
        (c for c in (record.citations if record else []) if str(c.get("id")) == number), None
    )
    if record is None or cited is None:
        raise SessionNotFound(f"no citation [{number}] in your latest answer")
    return JSONResponse(
        {
            "citation_id": number,
            "title": cited.get("title", ""),
            "full_content": cited.get("full_content", ""),
            "source_id": cited.get("source_id", ""),
            "url": cited.get("url", ""),
            "session_id": ids.public(record.id),
        }
    )
