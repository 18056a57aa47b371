"""Streamed text stored once as deltas, rebuilt for the wire the same way live and replayed."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path

from deepresearch.config import AgentTemplate, Settings
from deepresearch.events import Completed, Event, FinalAnswerChunk, RoundStart, Thinking
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.deltas import SENT_BUDGET, SENT_SLACK, Compactor
from deepresearch.runtime.manager import SessionManager, SessionRequest
from deepresearch.runtime.metrics import Metrics
from deepresearch.sessions import SqliteSessionStore
from deepresearch.sessions.records import StoredEvent

PIECE = "The evidence favours metformin first; " * 2 + "x" * 24  # 100 characters
PIECES = 1000  # 100 KB of reasoning in all


class LongThinker:
    """An agent that reasons at length in one round, then in a second, then answers."""

    def __init__(self, session_id: str, _config: AgentTemplate) -> None:
        self.sid = session_id

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        text = ""
        yield RoundStart(session_id=self.sid, round=1)
        for _ in range(PIECES):
            text += PIECE
            yield Thinking(session_id=self.sid, round=1, content=text, delta=PIECE)
        yield RoundStart(session_id=self.sid, round=2)
        yield Thinking(session_id=self.sid, round=2, content="Short.", delta="Short.")
        answer = ""
        for word in ("Metformin ", "is ", "first-line ", "[1]."):
            answer += word
            yield FinalAnswerChunk(session_id=self.sid, content=answer)
        yield Completed(session_id=self.sid)


async def run_session(tmp_path: Path) -> tuple[SessionManager, SqliteSessionStore, str, list]:
    settings = Settings(data_dir=tmp_path, corpus=[], search=["local"])  # type: ignore[call-arg]
    store = SqliteSessionStore(tmp_path / "sessions.sqlite")
    await store.open()
    admission = Admission(2, 10)
    manager = SessionManager(settings, store, admission, Metrics(admission), LongThinker)
    session_id = await manager.start(SessionRequest(question="q", on_disconnect="continue"))
    live = [e async for e in manager.follow(session_id) if e is not None]
    return manager, store, session_id, live


def texts(events: list[StoredEvent]) -> dict[tuple[str, int], str]:
    """The last accumulated text of each (type, round) as a client shows it."""
    shown: dict[tuple[str, int], str] = {}
    for event in events:
        data = json.loads(event.data)
        if event.type in ("thinking", "final_answer_chunk"):
            shown[(event.type, data.get("round", 0))] = data["content"]
    return shown


async def test_reasoning_is_stored_once_and_replays_exactly_as_it_streamed(
    tmp_path: Path,
) -> None:
    manager, store, session_id, live = await run_session(tmp_path)
    try:
        stored = await store.events(session_id)
        stored_bytes = sum(len(e.data) + len(e.type) for e in stored)
        assert stored_bytes < 300_000  # for 100 KB of reasoning in 1,000 pieces
        assert texts(live)[("thinking", 1)] == PIECE * PIECES
        assert texts(live)[("thinking", 2)] == "Short."
        assert texts(live)[("final_answer_chunk", 0)] == "Metformin is first-line [1]."
        replay = [e async for e in manager.follow(session_id) if e is not None]
        assert replay == live
        assert [json.loads(e.data)["type"] for e in live][-1] == "completed"
    finally:
        await store.close()


async def test_bytes_sent_stay_within_a_small_multiple_of_the_text(tmp_path: Path) -> None:
    _, store, _, live = await run_session(tmp_path)
    try:
        reasoning = [e for e in live if e.type == "thinking" and '"round":1' in e.data]
        sent = sum(len(json.loads(e.data)["content"]) for e in reasoning)
        text = len(PIECE) * PIECES
        assert sent <= (SENT_BUDGET + 1) * text + SENT_SLACK
        assert len(reasoning) >= 10  # and it still streamed, not one lump at the end
        # Each sent event's delta is the text since the previous sent one.
        assert "".join(json.loads(e.data)["delta"] for e in reasoning) == PIECE * PIECES
    finally:
        await store.close()


async def test_a_deltas_only_client_gets_the_same_text(tmp_path: Path) -> None:
    manager, store, session_id, live = await run_session(tmp_path)
    try:
        pieces = [e async for e in manager.follow(session_id, deltas=True) if e is not None]
        joined: dict[tuple[str, int], str] = {}
        for event in pieces:
            data = json.loads(event.data)
            if event.type in ("thinking", "final_answer_chunk"):
                assert data["content"] == ""
                key = (event.type, data.get("round", 0))
                joined[key] = ("" if data.get("restart") else joined.get(key, "")) + data["delta"]
        assert joined == texts(live)
    finally:
        await store.close()


async def test_a_stream_resumed_mid_reasoning_continues_exactly_as_live(tmp_path: Path) -> None:
    manager, store, session_id, live = await run_session(tmp_path)
    try:
        middle = [e for e in live if e.type == "thinking"][5]
        resumed = [e async for e in manager.follow(session_id, middle.seq) if e is not None]
        assert resumed == [e for e in live if e.seq > middle.seq]
    finally:
        await store.close()


def test_the_compactor_moves_on_only_with_a_stored_row() -> None:
    """A row whose write failed is not the base of the next one: the compactor is
    where the store is, and the next row under the same number carries the text
    from where the stored rows left it."""
    compactor = Compactor()
    first = compactor.row(1, Thinking(session_id="s", round=1, content="Metformin", delta=""))
    compactor.commit()
    failed = compactor.row(2, Thinking(session_id="s", round=1, content="Metformin is", delta=""))
    assert json.loads(failed.data)["delta"] == " is"  # never stored: no commit
    again = compactor.row(
        2, Thinking(session_id="s", round=1, content="Metformin is first", delta="")
    )
    compactor.commit()
    stored = [json.loads(row.data) for row in (first, again)]
    assert [(r["delta"], r["since"]) for r in stored] == [("Metformin", 1), (" is first", 1)]
    # A fresh round starts at its own number, once that row is stored.
    fresh = compactor.row(3, Thinking(session_id="s", round=2, content="Next", delta=""))
    compactor.commit()
    assert json.loads(fresh.data)["since"] == 3
