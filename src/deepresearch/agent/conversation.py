"""Earlier turns of a conversation, as context for a follow-up question.

The agent sees the earlier questions and answers (never their tool traces) in
front of the new question, in its one user message: the context budget's
trimming keeps that message whole, so the history is bounded here instead, the
oldest exchanges dropped first, visibly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Earlier answers' [n] markers point at the earlier sessions' sources; in the new
# session the same numbers name other sources, so they are not shown to the model.
MARKER = re.compile(r"\s?\[\d{1,4}(?:\s*[-,\u2013]\s*\d{1,4})*\]")
CHARS_PER_TOKEN = 3.5
# At most this share of the context budget goes to earlier turns.
HISTORY_SHARE = 0.25


@dataclass(frozen=True)
class Exchange:
    """One earlier turn: the question and the answer it got."""

    question: str
    answer: str


def _block(exchange: Exchange) -> str:
    answer = MARKER.sub("", exchange.answer).strip()
    return f"Question: {exchange.question.strip()}\nAnswer: {answer}"


def framed_question(question: str, history: Sequence[Exchange], context_tokens: int) -> str:
    """The question with as many of the latest exchanges as fit in front of it."""
    if not history:
        return question
    room = int(context_tokens * HISTORY_SHARE * CHARS_PER_TOKEN)
    kept: list[str] = []
    for exchange in reversed(history):
        block = _block(exchange)
        if sum(map(len, kept)) + len(block) > room:
            break
        kept.insert(0, block)
    omitted = len(history) - len(kept)
    parts = ["This is a follow-up in a conversation. Earlier in the conversation:"]
    if omitted:
        parts.append(f"[{omitted} earlier exchange(s) omitted to fit the context]")
    parts.extend(kept)
    parts.append(f"The follow-up question to research and answer now:\n{question}")
    return "\n\n".join(parts)
