"""The only place events become bytes: ``id: <seq>`` + ``data: <json>``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from deepresearch.sessions.records import StoredEvent

HEARTBEAT = b": heartbeat\n\n"


def encode(event: StoredEvent) -> bytes:
    # Event JSON is one line by construction (pydantic escapes newlines).
    return f"id: {event.seq}\ndata: {event.data}\n\n".encode()


async def sse_bytes(events: AsyncIterator[StoredEvent | None]) -> AsyncIterator[bytes]:
    """Encode a session's events; ``None`` (an idle stretch) becomes a heartbeat comment."""
    async for event in events:
        yield HEARTBEAT if event is None else encode(event)
