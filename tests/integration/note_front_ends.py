"""The note's two React front ends' stream handling, replayed in Python.

``wxjttxs/openevidence_demo``, ``inference/frontend-react/``: ``src/services/api.ts``
(``sendStreamingChat`` and ``handleStreamEvent``) and ``src/App.tsx`` (how a message
joins the list), at commit ``c031775`` (the one the note describes) and ``644adf5``
(its latest: chat history and a citation panel). Only what our server's event types
reach is modelled; each rule cites the code it copies. ``Date.now()`` ids are modelled
as distinct per event (a counter).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Commit = Literal["c031775", "644adf5"]

# handleStreamEvent: the types that get an id of their own (a new card); the others
# reuse ``currentMessageId`` (the last card shown) or return null (no card).
NEW_CARD = {
    "init",
    "round_start",
    "tool_call_start",
    "tool_result",
    "tool_error",
    "answer_generation",
    "error",
    "timeout",
    "no_answer",
    "cancelled",
}
CARD_TYPE = {
    "init": "assistant",
    "round_start": "assistant",
    "thinking": "thinking",
    "tool_call_start": "tool-call",
    "tool_result": "tool-result",
    "tool_error": "error",
    "answer_generation": "assistant",
    "final_answer_chunk": "final-answer",
    "final_answer": "final-answer",
    "error": "error",
    "timeout": "error",
    "no_answer": "assistant",
    "cancelled": "assistant",
}


@dataclass
class Card:
    id: str
    type: str
    event_type: str
    content: str
    streaming: bool = False
    accumulated: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FrontEnd:
    commit: Commit
    cards: list[Card] = field(default_factory=list)
    current_id: str | None = None  # api.ts: currentMessageId
    has_final_answer: bool = False  # 644adf5: hasFinalAnswer
    buffer: str = ""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def feed(self, chunk: str) -> None:
        """api.ts: ``buffer += decode(value); lines = buffer.split('\\n');
        buffer = lines.pop()``; each ``data: `` line is parsed and handled."""
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.startswith("data: "):
                self.handle(json.loads(line[6:]))

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.commit == "644adf5":
            if kind == "final_answer":
                self.has_final_answer = True
            if kind == "error" and self.has_final_answer:
                return  # an error after the final answer is ignored
        card = self._card(event)
        if card is not None:
            self.current_id = card.id
            self._show(card)

    def _card(self, event: dict[str, Any]) -> Card | None:
        kind = event["type"]
        if kind not in CARD_TYPE:
            return None  # "completed" and unknown types: null
        content = event.get("content", "")
        if kind in NEW_CARD or (kind == "final_answer" and self.commit == "c031775"):
            # `${prefix}-${Date.now()}`; c031775 gives final_answer a card of its own.
            card_id = f"{kind}-{next(self._ids)}"
        else:
            fallback = {
                "thinking": "thinking-current"
                if self.commit == "644adf5"
                else f"msg-{next(self._ids)}",
                "final_answer_chunk": "final-answer"
                if self.commit == "644adf5"
                else "final-answer-streaming",
                "final_answer": "final-answer",
            }[kind]
            card_id = self.current_id or fallback
        card = Card(card_id, CARD_TYPE[kind], kind, content)
        if kind == "final_answer_chunk":
            card.streaming = event.get("is_streaming") is not False
            if self.commit == "644adf5":
                card.accumulated = event.get("accumulated")
        if kind == "final_answer":
            card.metadata = {"answer_data": event.get("answer_data")}
        if kind == "tool_result":
            card.metadata = {"result": event.get("result")}
        return card

    def _show(self, card: Card) -> None:
        if self.commit == "c031775":
            # App.tsx: replace the last message if it has the same id, else append.
            if self.cards and self.cards[-1].id == card.id:
                self.cards[-1] = card
            else:
                self.cards.append(card)
            return
        # App.tsx (644adf5): find the id anywhere; a streaming final-answer chunk
        # accumulates (`accumulated || existing.content + new.content`), else replace.
        for index, existing in enumerate(self.cards):
            if existing.id == card.id:
                if card.streaming and card.event_type == "final_answer_chunk":
                    card.content = card.accumulated or existing.content + card.content
                self.cards[index] = card
                return
        self.cards.append(card)
