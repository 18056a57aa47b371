"""Several backends: calls spread round-robin, failures move on to the next one."""

from __future__ import annotations

import pytest

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import Message
from deepresearch.llm.pool import BackendPool
from tests.support import ScriptedModel

MESSAGES: list[Message] = [{"role": "user", "content": "q"}]


async def reply(pool: BackendPool) -> str:
    pieces = [p async for p in pool.stream(MESSAGES, GenerationSettings(), ())]
    return "".join(str(p) for p in pieces)


async def test_calls_take_turns_across_backends() -> None:
    first, second = ScriptedModel(["a1", "a2"]), ScriptedModel(["b1", "b2"])
    pool = BackendPool([first, second])
    assert [await reply(pool) for _ in range(4)] == ["a1", "b1", "a2", "b2"]


async def test_a_failing_backend_hands_the_call_to_the_next() -> None:
    down = ScriptedModel([BackendError("connection refused")])
    up = ScriptedModel(["answer"])
    pool = BackendPool([down, up])
    assert await reply(pool) == "answer"
    assert len(down.calls) == 1 and len(up.calls) == 1
    assert [s.url for s in pool.states()] == ["scripted", "scripted"]


async def test_failures_after_text_or_of_refused_requests_are_not_retried_elsewhere() -> None:
    partial = ScriptedModel([["half", BackendError("reset")]])
    spare = ScriptedModel(["never used"])
    with pytest.raises(BackendError, match="reset"):
        await reply(BackendPool([partial, spare]))
    refused = ScriptedModel([BackendError("HTTP 400", retryable=False)])
    with pytest.raises(BackendError, match="HTTP 400"):
        await reply(BackendPool([refused, spare]))
    assert spare.calls == []


async def test_when_every_backend_fails_the_error_names_them_all() -> None:
    pool = BackendPool(
        [ScriptedModel([BackendError("a down")]), ScriptedModel([BackendError("b down")])]
    )
    with pytest.raises(BackendError, match="a down; b down"):
        await reply(pool)
