"""The one retry policy: a budget per call, never for refused requests, restarts declared."""

from __future__ import annotations

import pytest

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import CallContext, Message, Piece, StartOver
from deepresearch.llm.retry import RetryingModel, RetryPolicy
from tests.support import ScriptedModel

MESSAGES: list[Message] = [{"role": "user", "content": "q"}]
NO_WAIT = RetryPolicy(attempts=3, first_backoff=0)


async def pieces(model: RetryingModel) -> list[Piece]:
    call = CallContext("s", "round")
    return [p async for p in model.stream(MESSAGES, GenerationSettings(), (), call=call)]


async def test_a_failure_before_the_first_piece_is_retried_unseen() -> None:
    inner = ScriptedModel([BackendError("503"), "fine"])
    assert "".join(map(str, await pieces(RetryingModel(inner, NO_WAIT)))) == "fine"
    assert len(inner.calls) == 2


async def test_a_failure_part_way_is_retried_after_a_start_over() -> None:
    broken: list[str | Exception] = ["half an ", BackendError("reset")]
    inner = ScriptedModel([broken, "whole"], piece=100)  # type: ignore[list-item]
    got = await pieces(RetryingModel(inner, NO_WAIT))
    assert got[0] == "half an " and isinstance(got[1], StartOver) and got[2:] == ["whole"]


async def test_refused_requests_are_never_retried() -> None:
    inner = ScriptedModel([BackendError("HTTP 400", retryable=False), "never"])
    with pytest.raises(BackendError, match="HTTP 400"):
        await pieces(RetryingModel(inner, NO_WAIT))
    assert len(inner.calls) == 1


async def test_no_attempt_starts_after_the_total_time() -> None:
    now = [0.0]
    inner = ScriptedModel([BackendError("slow death")] * 5)
    policy = RetryPolicy(attempts=5, total_seconds=10, first_backoff=0)

    class Clock:
        def __call__(self) -> float:
            now[0] += 11  # every look at the clock: another failed call's worth of time
            return now[0]

    with pytest.raises(BackendError):
        await pieces(RetryingModel(inner, policy, clock=Clock()))
    assert len(inner.calls) == 1


def test_backoff_is_jittered_within_the_exponential_step() -> None:
    policy = RetryPolicy(first_backoff=1, max_backoff=5)
    waits = [policy.backoff(3) for _ in range(200)]
    assert all(0 <= wait <= 4 for wait in waits) and len(set(waits)) > 100
    assert all(policy.backoff(10) <= 5 for _ in range(50))
