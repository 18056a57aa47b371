"""The only place events become bytes: ``id: <seq>`` + ``data: <json>``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from deepresearch.sessions.records import StoredEvent

HEARTBEAT = b": heartbeat\n\n"


def encode(event: StoredEvent) -> bytes:
    # Event JSON is one line by construction (pydantic escapes newlines).
    data = _with_accumulated(event.data) if event.type == "final_answer_chunk" else event.data
    return f"id: {event.seq}\ndata: {data}\n\n".encode()


def _with_accumulated(data: str) -> str:
    """The answer so far again as ``accumulated``: the note's latest front end appends
    each chunk's ``content`` to the answer card unless this field is present."""
    event = json.loads(data)
    if "accumulated" in event or not event.get("content"):
        return data
    event["accumulated"] = event["content"]
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


async def sse_bytes(
    events: AsyncIterator[StoredEvent | None],
    shown: Callable[[StoredEvent], StoredEvent] | None = None,
) -> AsyncIterator[bytes]:
    """Encode a session's events, each as ``shown`` makes it (the caller's view of its
    ids: ``runtime/ids.py``); ``None`` (an idle stretch) becomes a heartbeat comment."""
    async for event in events:
        if event is None:
            yield HEARTBEAT
        else:
            yield encode(shown(event) if shown is not None else event)
