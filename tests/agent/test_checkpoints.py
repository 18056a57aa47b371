"""Checkpoints in the ReAct agent, run by the runner over the real SQLite stores: a run
interrupted after round 2 resumes at round 3 without asking the model for rounds 1-2
again, its log going on (one ``session_start``, a ``resumed``, one terminal event,
contiguous numbers) and its citation numbers carrying on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from deepresearch.agent import ReactAgent
from deepresearch.agent.base import AgentState, RoundHook
from deepresearch.config import AgentTemplate
from deepresearch.events import parse_event, utc_now
from deepresearch.runtime.runner import RunOutcome, SessionRun
from deepresearch.sessions.checkpoints import Checkpoint, SqliteCheckpointStore
from deepresearch.sessions.records import SessionRecord, StoredEvent
from deepresearch.sessions.sqlite import SqliteSessionStore
from deepresearch.tools.base import Source, ToolContext, ToolOutput
from tests.support import ScriptedModel


def search_call(query: str) -> str:
    call = {"name": "search", "arguments": {"query": [query]}}
    return f"<think>Search {query}.</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


class Library:
    """A search tool: each query finds its own sources, numbered by the session."""

    name = "search"
    description = "finds sources"
    parameters: dict[str, Any] = {"type": "object", "properties": {"query": {"type": "array"}}}

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        query = arguments["query"][0]
        sources = [
            Source(f"{query}:{n}", f"{query} {n}", f"https://example.org/{query}/{n}", "Text.")
            for n in (1, 2)
        ]
        lines = [f"[{context.citations.number(s)}] {s.title}" for s in sources]
        return ToolOutput("\n".join(lines), f"{len(sources)} sources found", tuple(sources))


class Hanging(ScriptedModel):
    """Replies from the script, then never says anything more (a crash comes first)."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.hanging = asyncio.Event()  # the call after the script is under way

    async def stream(self, messages: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if self._replies:
            async for piece in super().stream(messages, *args, **kwargs):
                yield piece
            return
        self.calls.append(list(messages))
        self.hanging.set()
        await asyncio.Event().wait()
        yield ""


class Saved(SqliteCheckpointStore):
    """The real checkpoint store, telling the test each round it saved."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.rounds: asyncio.Queue[int] = asyncio.Queue()

    async def save(self, checkpoint: Checkpoint, *, lease: str | None = None) -> None:
        await super().save(checkpoint, lease=lease)
        self.rounds.put_nowait(checkpoint.round)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteSessionStore, Saved]]:
    store = SqliteSessionStore(tmp_path / "sessions.sqlite")
    checkpoints = Saved(tmp_path / "sessions.sqlite")
    await store.open()
    await checkpoints.open()
    yield store, checkpoints
    await checkpoints.close()
    await store.close()


def factory(model: ScriptedModel) -> Any:
    def make(
        session_id: str,
        config: AgentTemplate,
        *,
        on_round: RoundHook | None = None,
        checkpoint: AgentState | None = None,
    ) -> ReactAgent:
        tools = {"search": Library()}
        return ReactAgent(
            session_id,
            model,
            tools,
            config,
            today=date(2026, 1, 2),
            on_round=on_round,
            checkpoint=checkpoint,
        )

    return make


async def test_a_run_interrupted_after_round_two_resumes_at_round_three(
    stores: tuple[SqliteSessionStore, Saved],
) -> None:
    store, checkpoints = stores
    record = SessionRecord(
        id="resume-1", question="How is gout treated?", status="queued", created_at=utc_now()
    )
    await store.create(record)
    config = AgentTemplate(max_rounds=10).for_request(temperature=0.3)
    first = Hanging([search_call("gout"), search_call("colchicine")])
    run = SessionRun(
        record,
        store=store,
        agent_factory=factory(first),
        config=config,
        checkpoints=checkpoints,
        why_cancelled=_hand_back,  # the crash: cancelled by nobody who says why
    )
    task = asyncio.create_task(run.run())
    assert await checkpoints.rounds.get() == 1
    assert await checkpoints.rounds.get() == 2
    await first.hanging.wait()  # round 3's call is under way when the process "dies"
    assert len(first.calls) == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    interrupted = await store.get("resume-1")
    assert interrupted is not None and interrupted.status == "processing"
    saved = await checkpoints.load("resume-1")
    assert saved is not None and saved.round == 2 and saved.counters["model_calls"] == 2

    second = ScriptedModel(
        [search_call("allopurinol"), "<answer>Allopurinol [5] after colchicine [3].</answer>"]
    )
    resumed = SessionRun(
        interrupted,
        store=store,
        agent_factory=factory(second),
        config=AgentTemplate(max_rounds=10),  # the request's settings come from the checkpoint
        checkpoints=checkpoints,
        resume=True,
    )
    outcome = await resumed.run()

    assert outcome.status == "completed" and outcome.stored and outcome.resumed_from == 2
    # Rounds 1-2 were not asked again: round 3 went on from their conversation.
    assert len(second.calls) == 2
    tool_responses = [m for m in second.calls[0] if "<tool_response>" in m["content"]]
    assert len(tool_responses) == 2
    assert second.settings[0].temperature == 0.3
    rows = await store.events("resume-1")
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    types = [row.type for row in rows]
    assert types.count("session_start") == 1 and types.count("resumed") == 1
    assert [t for t in types if t in {"completed", "error", "cancelled", "timeout"}] == [
        "completed"
    ]
    assert types[-1] == "completed"
    after = types[types.index("resumed") :]
    rounds = [_round(row) for row in rows[types.index("resumed") :] if row.type == "round_start"]
    assert rounds == [3, 4] and after[1] == "init"
    assert json.loads(rows[types.index("resumed")].data)["round"] == 2
    # Numbering went on: round 3's sources are 5 and 6, so [5] is allopurinol's first.
    answer = parse_event(next(r.data for r in rows if r.type == "final_answer"))
    assert answer.type == "final_answer"
    assert [c.source_id for c in answer.answer_data.citations] == [
        "allopurinol:1",
        "colchicine:1",
    ]
    assert await checkpoints.load("resume-1") is None  # deleted with the terminal event


async def _hand_back() -> str | None:
    return None


def _round(row: StoredEvent) -> int:
    return int(json.loads(row.data)["round"])


async def _resume_bare(
    store: SqliteSessionStore, checkpoints: Saved, record: SessionRecord
) -> tuple[RunOutcome, list[str], ScriptedModel]:
    """Resume a session whose log holds only its ``session_start`` and no checkpoint."""
    await store.create(record)
    start = StoredEvent(1, "session_start", '{"type":"session_start"}')
    await store.append(record.id, [start])
    model = ScriptedModel([search_call("gout"), "<answer>Done [1].</answer>"])
    run = SessionRun(
        record,
        store=store,
        agent_factory=factory(model),
        config=AgentTemplate(),
        checkpoints=checkpoints,
        resume=True,
    )
    outcome = await run.run()
    return outcome, [row.type for row in await store.events(record.id)], model


async def test_resume_without_a_checkpoint_starts_the_rounds_again(
    stores: tuple[SqliteSessionStore, Saved],
) -> None:
    record = SessionRecord(
        id="resume-2",
        question="q",
        status="processing",
        created_at=utc_now(),
        started_at=utc_now(),  # it had taken a slot: its first round was under way
    )
    outcome, types, model = await _resume_bare(*stores, record)
    assert outcome.status == "completed" and outcome.resumed_from == 0
    assert types[:4] == ["session_start", "resumed", "init", "round_start"]
    assert types.count("session_start") == 1 and len(model.calls) == 2


async def test_a_session_that_only_waited_goes_on_without_announcing_a_resume(
    stores: tuple[SqliteSessionStore, Saved],
) -> None:
    # Its log so far is what a queue wrote (here, or on the API node that queued it).
    record = SessionRecord(id="resume-3", question="q", status="queued", created_at=utc_now())
    outcome, types, model = await _resume_bare(*stores, record)
    assert outcome.status == "completed"
    assert types[:3] == ["session_start", "init", "round_start"]
    assert "resumed" not in types and len(model.calls) == 2
