"""The session manager in-process: run limits, logs, isolation between servers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from deepresearch.config import GenerationSettings, Settings
from deepresearch.events import parse_event
from deepresearch.llm.base import BackendState, CallContext, Message
from deepresearch.runtime.manager import SessionRequest
from deepresearch.services import Services, open_services
from tests.support import ScriptedModel, write_corpus

ANSWER = "<answer>Done [1].</answer>"


class SilentModel:
    """A backend that accepts the request and then never says anything."""

    def states(self) -> list[BackendState]:
        return []

    def end_session(self, session_id: str) -> None:
        pass

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        return 1

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: object = None,
    ) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""


def settings(tmp_path: Path, **overrides: object) -> Settings:
    corpus = write_corpus(tmp_path / "corpus")
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "corpus": [corpus],
        "search": ["local"],  # no test talks to the internet
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def run_to_end(services: Services, question: str, **generation: float) -> list[str]:
    session_id = await services.manager.start(
        SessionRequest(question=question, generation=dict(generation))
    )
    return [
        parse_event(stored.data).type
        async for stored in services.manager.follow(session_id)
        if stored is not None
    ]


async def test_run_time_limit_ends_the_session_with_timeout(tmp_path: Path) -> None:
    config = settings(tmp_path, max_run_seconds=0.2)
    async with open_services(config, model=SilentModel()) as services:  # type: ignore[arg-type]
        types = await run_to_end(services, "a question that never gets an answer")
        assert types[-1] == "timeout"
        assert services.admission.busy == 0


async def test_logs_tag_the_session_and_keep_the_question_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepresearch.sessions")
    async with open_services(settings(tmp_path)) as services:
        await run_to_end(services, "my private diabetes question")
    lines = [r.getMessage() for r in caplog.records if r.name == "deepresearch.sessions"]
    assert any("admitted" in line for line in lines)
    assert any("acquired slot after" in line for line in lines)
    assert any("completed; queue wait" in line and "slot released" in line for line in lines)
    assert all(line.startswith("[session ") for line in lines)
    assert not any("private diabetes" in line for line in lines)


async def test_question_logging_can_be_turned_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepresearch.sessions")
    async with open_services(settings(tmp_path, log_questions=True)) as services:
        await run_to_end(services, "my logged question")
    assert any("my logged question" in r.getMessage() for r in caplog.records)


async def test_two_servers_in_one_process_share_nothing(tmp_path: Path) -> None:
    cold = ScriptedModel([ANSWER])
    hot = ScriptedModel([ANSWER])
    first = settings(tmp_path / "a", max_concurrent=1)
    second = settings(tmp_path / "b", max_concurrent=5)
    async with (
        open_services(first, model=cold) as one,
        open_services(second, model=hot) as two,
    ):
        await asyncio.gather(
            run_to_end(one, "q", temperature=0.1), run_to_end(two, "q", temperature=1.9)
        )
        assert one.admission.max_concurrent == 1 and two.admission.max_concurrent == 5
        listed_one, _ = await one.manager.list_sessions(limit=10, offset=0, status=None, owner=None)
        listed_two, _ = await two.manager.list_sessions(limit=10, offset=0, status=None, owner=None)
        assert {r.id for r in listed_one}.isdisjoint({r.id for r in listed_two})
    assert cold.settings[0].temperature == 0.1 and hot.settings[0].temperature == 1.9


async def test_cancelling_mid_write_never_loses_an_event_from_the_live_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepresearch.sessions.sqlite import SqliteSessionStore

    original = SqliteSessionStore.append

    async def slow_append(self: SqliteSessionStore, *args: object, **kwargs: object) -> None:
        await asyncio.sleep(0.02)  # widen the window a cancel can land in
        await original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteSessionStore, "append", slow_append)
    thinking = ["<think>" + "step " * 400 + "</think><answer>never</answer>"] * 10
    async with open_services(settings(tmp_path), model=ScriptedModel(thinking, piece=3)) as svc:
        for attempt in range(10):
            session_id = await svc.manager.start(SessionRequest(question=f"q{attempt}"))
            live: list[str] = []
            async for stored in svc.manager.follow(session_id):
                if stored is None:
                    continue
                live.append(stored.data)
                if len(live) == 4 + attempt % 3:
                    asyncio.get_running_loop().call_later(
                        0.005 * attempt,
                        asyncio.ensure_future,
                        svc.manager.cancel(session_id, None, "test cancel"),
                    )
            replay = [e.data async for e in svc.manager.follow(session_id) if e is not None]
            assert live == replay
            assert parse_event(live[-1]).type in {"cancelled", "completed"}


async def test_a_session_cancelled_before_it_first_runs_still_ends_properly(
    tmp_path: Path,
) -> None:
    async with open_services(settings(tmp_path)) as services:
        session_id = await services.manager.start(SessionRequest(question="never started"))
        # No await between start and cancel: the session's task has not taken a step.
        record = await services.manager.cancel(session_id, None, "cancelled at once")
        assert record.status == "cancelled" and record.error == "cancelled at once"
        types = [
            parse_event(e.data).type
            async for e in services.manager.follow(session_id)
            if e is not None
        ]
        assert types == ["session_start", "cancelled"]
        assert services.admission.busy == 0 and services.manager.live_count == 0
