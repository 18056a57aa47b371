"""The SSE encoder: one event, one ``id`` and one ``data`` line."""

from __future__ import annotations

import json

from deepresearch.events import FinalAnswerChunk, Thinking
from deepresearch.server.sse import encode
from deepresearch.sessions.records import StoredEvent


def stored(seq: int, event: FinalAnswerChunk | Thinking) -> StoredEvent:
    return StoredEvent(seq, event.type, event.model_dump_json())


def test_an_answer_chunk_also_carries_the_answer_so_far_as_accumulated() -> None:
    chunk = FinalAnswerChunk(session_id="s", content="Metformin is first-line [1]")
    wire = encode(stored(7, chunk)).decode()
    assert wire.startswith("id: 7\ndata: ") and wire.endswith("\n\n")
    data = json.loads(wire.removeprefix("id: 7\ndata: "))
    assert data["accumulated"] == data["content"] == "Metformin is first-line [1]"
    assert data["type"] == "final_answer_chunk" and data["is_streaming"] is True


def test_other_events_are_sent_exactly_as_stored() -> None:
    thinking = Thinking(session_id="s", round=1, content="so far", delta="far")
    assert encode(stored(3, thinking)) == f"id: 3\ndata: {thinking.model_dump_json()}\n\n".encode()
