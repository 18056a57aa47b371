"""How records look on the wire."""

from __future__ import annotations

from typing import Any

from deepresearch.sessions.records import ConversationSummary, SessionRecord


def summary(record: SessionRecord) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "question": record.question,
        "start_time": record.created_at.isoformat(),
        "status": record.status,
    }
    if record.ended_at is not None:
        summary["end_time"] = record.ended_at.isoformat()
    return summary


def detail(record: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": record.id,
        **summary(record),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "on_disconnect": record.on_disconnect,
        "answer": record.answer,
        "citations": record.citations,
        "error": record.error,
        "events": record.last_seq,
        "conversation_id": record.conversation,
        "turn": record.turn,
    }


def conversation_summary(found: ConversationSummary) -> dict[str, Any]:
    return {
        "conversation_id": found.id,
        "title": found.title,
        "created_at": found.created_at.isoformat(),
        "updated_at": found.updated_at.isoformat(),
        "turns": found.turns,
        "status": found.status,
    }


def conversation(turns: list[SessionRecord]) -> dict[str, Any]:
    return {
        "conversation_id": turns[0].conversation,
        "title": turns[0].question,
        "created_at": turns[0].created_at.isoformat(),
        "updated_at": turns[-1].created_at.isoformat(),
        "turns": [detail(turn) for turn in turns],
    }
