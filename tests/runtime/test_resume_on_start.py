"""Restarts of the single process, in-process: a server stopped mid-run hands its session
back and the next one resumes it from its checkpoint (with resuming off, the stop
cancels it), over the real stores in one data dir."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from deepresearch.config import Settings
from deepresearch.events import parse_event
from deepresearch.runtime.manager import SessionRequest
from deepresearch.services import Services, open_services
from tests.support import TERMINAL, ScriptedModel, write_corpus

SEARCH = (
    "<think>Look it up.</think>\n<tool_call>\n"
    + json.dumps({"name": "search", "arguments": {"query": ["metformin"]}})
    + "\n</tool_call>"
)


class ThenSilent(ScriptedModel):
    """Replies from the script, then stalls (the server stops meanwhile)."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.stalled = asyncio.Event()  # set once it has been asked and stalls

    async def stream(self, messages: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if self._replies:
            async for piece in super().stream(messages, *args, **kwargs):
                yield piece
            return
        self.calls.append(list(messages))
        self.settings.append(args[0] if args else kwargs["settings"])
        self.stalled.set()
        await asyncio.Event().wait()
        yield ""


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "corpus": [write_corpus(tmp_path / "corpus")],
        "search": ["local"],
        "disconnect_grace": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


async def until_round(services: Services, session_id: str, number: int) -> list[str]:
    seen = []
    async for stored in services.manager.follow(session_id):
        if stored is None:
            continue
        event = parse_event(stored.data)
        seen.append(event.type)
        if event.type == "round_start" and event.round == number:
            return seen
    raise AssertionError(f"the session ended first: {seen}")


async def test_a_stopped_server_hands_back_and_the_next_one_resumes(tmp_path: Path) -> None:
    config = settings(tmp_path)
    first = ThenSilent([SEARCH, SEARCH])
    async with open_services(config, model=first) as services:
        session_id = await services.manager.start(
            SessionRequest(question="How is diabetes treated?", generation={"temperature": 0.2})
        )
        await until_round(services, session_id, 3)  # round 2's checkpoint is saved
    record = await _record(config, session_id)
    assert record["status"] == "processing"  # handed back, not cancelled

    second = ScriptedModel(["<answer>Metformin [1].</answer>"])
    async with open_services(config, model=second) as services:
        assert services.manager.live_count == 1  # resumed at start-up
        # Every stored row (deltas=True: no streamed-text row left out).
        rows = [e async for e in services.manager.follow(session_id, deltas=True) if e is not None]
        types = [row.type for row in rows]
        assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
        assert types.count("session_start") == 1 and types.count("resumed") == 1
        assert [t for t in types if t in TERMINAL] == ["completed"] and types[-1] == "completed"
        resumed = parse_event(rows[types.index("resumed")].data)
        assert resumed.type == "resumed" and resumed.round == 2
        final = await services.manager.get(session_id, None)
        assert final.status == "completed" and final.answer is not None
    assert len(first.calls) == 3 and len(second.calls) == 1  # rounds 1-2 not asked again
    assert second.settings[0].temperature == 0.2


async def test_a_session_stopped_in_its_first_round_resumes_with_its_own_settings(
    tmp_path: Path,
) -> None:
    """No checkpoint yet (round 1 never completed): the record keeps the request's
    generation settings, and the resumed run asks the model with them."""
    config = settings(tmp_path)
    first = ThenSilent([])  # round 1's call stalls until the server stops
    chosen = {"temperature": 0.2, "max_tokens": 777}
    async with open_services(config, model=first) as services:
        session_id = await services.manager.start(
            SessionRequest(question="How is diabetes treated?", generation=chosen)
        )
        await first.stalled.wait()  # round 1 has asked the model
    assert first.settings[0].temperature == 0.2
    second = ScriptedModel(["<answer>Metformin.</answer>"])
    async with open_services(config, model=second) as services:
        types = [e.type async for e in services.manager.follow(session_id) if e is not None]
        assert "resumed" in types and types[-1] == "completed"
    assert len(second.calls) == 1
    assert (second.settings[0].temperature, second.settings[0].max_tokens) == (0.2, 777)


async def test_with_resuming_off_a_stop_cancels_and_nothing_resumes(tmp_path: Path) -> None:
    config = settings(tmp_path, resume_on_start=False)
    async with open_services(config, model=ThenSilent([SEARCH])) as services:
        session_id = await services.manager.start(SessionRequest(question="q"))
        await until_round(services, session_id, 2)
    async with open_services(config, model=ScriptedModel([])) as services:
        assert services.manager.live_count == 0
        record = await services.manager.get(session_id, None)
        # Off, a stop cancels as before (a kill -9 is marked failed at the next start:
        # tests/integration/test_restart.py).
        assert record.status == "cancelled"
        types = [e.type async for e in services.manager.follow(session_id) if e is not None]
        assert [t for t in types if t in TERMINAL] == ["cancelled"] and types[-1] == "cancelled"


async def _record(config: Settings, session_id: str) -> dict[str, Any]:
    from deepresearch.sessions.sqlite import SqliteSessionStore

    store = SqliteSessionStore(config.database_path)
    await store.open()
    try:
        record = await store.get(session_id)
        assert record is not None
        return {"status": record.status}
    finally:
        await store.close()


async def test_a_session_the_queue_cannot_take_back_is_marked_failed(tmp_path: Path) -> None:
    from deepresearch.events import utc_now
    from deepresearch.sessions.records import SessionRecord, StoredEvent
    from deepresearch.sessions.sqlite import SqliteSessionStore

    config = settings(tmp_path, max_concurrent=1, max_queue=0)
    store = SqliteSessionStore(config.database_path)
    await store.open()
    for n in (1, 2):  # what a killed server left: two sessions under way
        record = SessionRecord(
            id=f"left-{n}",
            question="q",
            status="processing",
            created_at=utc_now(),
            started_at=utc_now(),
        )
        await store.create(record)
        await store.append(record.id, [StoredEvent(1, "session_start", "{}")])
    await store.close()

    async with open_services(config, model=ScriptedModel(["<answer>Done.</answer>"])) as svc:
        first = [e.type async for e in svc.manager.follow("left-1") if e is not None]
        assert first[:2] == ["session_start", "resumed"] and first[-1] == "completed"
        second = await svc.manager.get("left-2", None)
        assert second.status == "failed" and "could not resume" in (second.error or "")
