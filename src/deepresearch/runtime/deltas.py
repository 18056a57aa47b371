"""Streamed text stored once, sent accumulated: ``thinking`` and ``final_answer_chunk``.

The contract's ``content`` for these two is the text so far, which the note's
front end needs; storing or sending every such event whole would grow with the
square of the text (a long reasoning round, every 50 ms). So:

- the store keeps each as a *delta row*: the new piece, the round, the time,
  and ``since``, the sequence number where its text began (its own number when
  the text starts afresh: a new round, or a reply asked again after a failure).
  Stored bytes grow linearly with the text.
- ``WireView`` turns stored rows back into the contract's events, the same way
  live and on replay (it reads only the rows, never the clock), so a stream
  resumed anywhere continues exactly as the live one did. In the default view
  the accumulated event is sent when the text has grown by a quarter, or a second
  after the last one, as long as the bytes sent for that text stay within
  ``SENT_BUDGET`` times its length (plus a little for short texts); held text is
  always sent before the next event of any other kind. Each sent event's
  ``delta`` is the text since the previous *sent* one.
- In the deltas view (``?deltas=true``) every row is sent with its piece in
  ``delta`` and an empty ``content``; a row whose text starts afresh carries
  ``"restart": true`` (drop what you have of that text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deepresearch.events import Event, FinalAnswerChunk, Thinking
from deepresearch.sessions.records import StoredEvent

ACCUMULATED = frozenset({"thinking", "final_answer_chunk"})
GROWTH = 1.25  # send again once the text has grown by a quarter...
INTERVAL = 1.0  # ...or this many seconds after the last one was sent
SENT_BUDGET = 4  # bytes sent for a text stay under this many times its length...
SENT_SLACK = 2048  # ...plus this, so short texts stream smoothly


class Compactor:
    """The writer's side: turns a session's events into rows to store.

    ``row`` only prepares a row, against the rows prepared before it (a writer
    may hold several to store them together); the compactor moves on to them at
    ``commit``, which the writer calls once they are all stored, and drops them
    at ``rollback`` (the write failed). So each event is seen once, in order,
    under the number it is stored with, and a write that failed leaves the
    compactor where the store is. Preparing a number again (one not after the
    last prepared) drops what was prepared from it on, as a rollback would.
    """

    def __init__(self) -> None:
        self._stored = _Texts()  # as of the rows stored
        self._ahead: _Texts | None = None  # as of the rows prepared after them
        self._ahead_seq = 0  # the last number prepared

    def row(self, seq: int, event: Event) -> StoredEvent:
        """The row that stores ``event`` as number ``seq`` (after those prepared)."""
        if self._ahead is not None and seq <= self._ahead_seq:
            self.rollback()
        self._ahead_seq = seq
        if not isinstance(event, Thinking | FinalAnswerChunk):
            return StoredEvent(seq, event.type, event.model_dump_json())
        if self._ahead is None:
            self._ahead = self._stored.copy()
        texts = self._ahead
        kind = event.type
        before = texts.text.get(kind, "")
        fresh = (
            kind not in texts.since
            or not event.content.startswith(before)
            or (isinstance(event, Thinking) and texts.rounds.get(kind) != event.round)
        )
        since = seq if fresh else texts.since[kind]
        if fresh:
            before = ""
        row: dict[str, Any] = {
            "timestamp": event.model_dump(mode="json", include={"timestamp"})["timestamp"],
            "delta": event.content[len(before) :],
            "since": since,
        }
        texts.text[kind], texts.since[kind] = event.content, since
        if isinstance(event, Thinking):
            row["round"] = texts.rounds[kind] = event.round
        return StoredEvent(seq, kind, _dumps(row))

    def commit(self) -> None:
        """The rows prepared are stored: later rows follow on from them."""
        if self._ahead is not None:
            self._stored, self._ahead = self._ahead, None

    def rollback(self) -> None:
        """The rows prepared were not stored: later rows follow on from the stored."""
        self._ahead = None


@dataclass
class _Texts:
    """Per event type: the text so far, the number where it began, its round."""

    text: dict[str, str] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _Texts:
        return _Texts(dict(self.text), dict(self.since), dict(self.rounds))


def since_of(event: StoredEvent) -> int | None:
    """Where the text of a delta row began; None for any other row."""
    if event.type not in ACCUMULATED:
        return None
    return int(json.loads(event.data)["since"])


@dataclass
class _Text:
    since: int
    text: str = ""
    sent_len: int = 0  # how much of it the last sent event carried
    sent_at: datetime | None = None
    sent_bytes: int = 0
    held: tuple[int, dict[str, Any]] | None = None  # the latest row not sent yet


class WireView:
    """The reader's side: stored rows in, the rows to send out (with ids kept)."""

    def __init__(self, session_id: str, *, deltas: bool = False) -> None:
        self._sid = session_id
        self._deltas = deltas
        self._texts: dict[str, _Text] = {}

    def prime(self, rows: list[StoredEvent]) -> None:
        """Rebuild the state a follower had after ``rows`` without sending them."""
        for row in rows:
            self.feed(row)
        for text in self._texts.values():
            text.held = None  # the follower had these already

    def feed(self, row: StoredEvent) -> list[StoredEvent]:
        """What to send for ``row``: nothing (held), it, or held text then it."""
        if row.type not in ACCUMULATED:
            return [*self.flush(), row]
        stored = json.loads(row.data)
        out = [*self.flush(except_kind=row.type)]
        text = self._texts.get(row.type)
        restart = text is None or stored["since"] != text.since
        if restart:
            text = self._texts[row.type] = _Text(since=stored["since"])
        assert text is not None
        text.text += stored["delta"]
        wire = self._event(row.type, stored)
        if self._deltas:
            wire["content"] = ""
            if restart:
                wire["restart"] = True
            return [*out, StoredEvent(row.seq, row.type, _dumps(wire))]
        at = datetime.fromisoformat(stored["timestamp"])
        grown = len(text.text) >= GROWTH * text.sent_len
        waited = text.sent_at is None or (at - text.sent_at).total_seconds() >= INTERVAL
        affordable = text.sent_bytes + len(text.text) <= SENT_BUDGET * len(text.text) + SENT_SLACK
        if restart or ((grown or waited) and affordable):
            return [*out, self._send(text, row.seq, wire, at)]
        text.held = (row.seq, wire)
        return out

    def flush(self, except_kind: str | None = None) -> list[StoredEvent]:
        """Held text, sent now: before another kind of event, or at the end."""
        out = []
        for kind, text in self._texts.items():
            if kind != except_kind and text.held is not None:
                seq, wire = text.held
                out.append(self._send(text, seq, wire, datetime.fromisoformat(wire["timestamp"])))
        out.sort(key=lambda row: row.seq)
        return out

    def _send(self, text: _Text, seq: int, wire: dict[str, Any], at: datetime) -> StoredEvent:
        wire["content"] = text.text
        wire["delta"] = text.text[text.sent_len :]
        text.sent_len, text.sent_at, text.held = len(text.text), at, None
        data = _dumps(wire)
        text.sent_bytes += len(text.text)
        return StoredEvent(seq, wire["type"], data)

    def _event(self, kind: str, stored: dict[str, Any]) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": kind,
            "session_id": self._sid,
            "content": "",
            "timestamp": stored["timestamp"],
            "delta": stored["delta"],
        }
        if kind == "thinking":
            wire["round"] = stored["round"]
        else:
            wire["is_streaming"] = True
        return wire


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
