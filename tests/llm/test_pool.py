"""The pool: a session's calls stay on one backend; load, health and limits move them."""

from __future__ import annotations

import asyncio

import pytest

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import CallContext, Message, StartOver
from deepresearch.llm.pool import BackendPool
from deepresearch.llm.retry import RetryingModel, RetryPolicy
from tests.support import ScriptedModel

MESSAGES: list[Message] = [{"role": "user", "content": "q"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def reply(model: BackendPool | RetryingModel, session: str | None = "s") -> str:
    call = CallContext(session, "round")
    pieces = [p async for p in model.stream(MESSAGES, GenerationSettings(), (), call=call)]
    return "".join(str(p) for p in pieces)


def scripted(n: int, name: str) -> ScriptedModel:
    return ScriptedModel([f"{name}{i}" for i in range(n)])


async def test_a_sessions_rounds_reach_one_backend() -> None:
    first, second = scripted(6, "a"), scripted(6, "b")
    pool = BackendPool([first, second])
    one = [await reply(pool, "one") for _ in range(3)]
    two = [await reply(pool, "two") for _ in range(3)]
    # Each session stays where it started; idle backends share new sessions out.
    assert one == ["a0", "a1", "a2"] and two == ["b0", "b1", "b2"]
    assert {call.session_id for call in first.contexts} == {"one"}
    assert {call.session_id for call in second.contexts} == {"two"}


async def test_new_sessions_go_to_the_least_loaded_backend() -> None:
    first, second = scripted(4, "a"), scripted(4, "b")
    pool = BackendPool([first, second], limit=4)
    await pool.backends[0].limiter.acquire()  # a call in flight on the first
    assert await reply(pool, "new") == "b0"
    pool.backends[0].limiter.release()


async def test_a_saturated_home_moves_the_session_when_another_has_room() -> None:
    first, second = scripted(4, "a"), scripted(4, "b")
    pool = BackendPool([first, second], limit=1)
    assert await reply(pool, "s") == "a0"
    await pool.backends[0].limiter.acquire()  # its home is now full
    assert await reply(pool, "s") == "b0"
    pool.backends[0].limiter.release()
    assert await reply(pool, "s") == "b1"  # and stays on its new home
    assert [b.sessions for b in pool.backends] == [0, 1]


async def test_a_failed_backend_moves_the_session_and_one_budget_covers_failover() -> None:
    down = ScriptedModel([BackendError("connection refused")])
    up = scripted(2, "b")
    clock = Clock()
    pool = BackendPool([down, up], clock=clock)
    model = RetryingModel(pool, RetryPolicy(attempts=2, first_backoff=0), clock=clock)
    assert await reply(model, "s") == "b0"
    assert len(down.calls) == 1 and len(up.calls) == 1
    assert [s.healthy for s in pool.states()] == [False, True]
    assert await reply(model, "s") == "b1"  # the session's home is the live backend now


async def test_a_dead_backend_costs_exactly_the_budget() -> None:
    dead = ScriptedModel([BackendError("connection refused")] * 10)
    model = RetryingModel(BackendPool([dead]), RetryPolicy(attempts=3, first_backoff=0))
    with pytest.raises(BackendError, match="connection refused"):
        await reply(model)
    assert len(dead.calls) == 3


async def test_every_call_of_a_session_waits_its_turn_under_the_backend_limit() -> None:
    gate = asyncio.Event()
    in_flight, most = 0, 0

    class Slow(ScriptedModel):
        async def stream(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await gate.wait()
            in_flight -= 1
            yield "summary"

    pool = BackendPool([Slow([])], limit=2)
    calls = [asyncio.create_task(reply(pool, "s")) for _ in range(5)]
    for _ in range(10):  # a few turns of the loop: every call reaches the gate
        await asyncio.sleep(0)
    assert pool.backends[0].limiter.waiting == 3
    assert pool.backends[0].limiter.in_flight == 2
    gate.set()
    assert await asyncio.gather(*calls) == ["summary"] * 5
    assert most == 2


async def test_a_down_backend_is_probed_after_its_backoff_and_comes_back() -> None:
    flaky = ScriptedModel([BackendError("reset"), "back"])
    clock = Clock()
    pool = BackendPool([flaky, scripted(1, "b")], clock=clock)
    with pytest.raises(BackendError):
        await reply(pool, "s")
    backend = pool.backends[0]
    assert not backend.up(clock.now)
    flaky.up = False
    clock.now += 0.7  # past the first backoff (0.5 s, jittered up to 0.6 s)
    await pool.refresh()
    assert not backend.up(clock.now) and backend.failures == 2  # the probe failed: longer wait
    flaky.up = True
    clock.now += 1.3
    await pool.refresh()
    assert backend.up(clock.now) and backend.recovered


async def test_tokens_are_counted_on_the_sessions_own_backend() -> None:
    first, second = scripted(2, "a"), scripted(2, "b")
    pool = BackendPool([first, second], limit=4)
    await pool.backends[0].limiter.acquire()
    await reply(pool, "s")  # home: the second
    pool.backends[0].limiter.release()
    await pool.count_tokens(MESSAGES, call=CallContext("s", "count"))
    assert first.counted == [] and [c.session_id for c in second.counted] == ["s"]


async def test_refused_requests_do_not_mark_the_backend_down() -> None:
    refused = ScriptedModel([BackendError("HTTP 400", retryable=False)])
    pool = BackendPool([refused])
    with pytest.raises(BackendError, match="HTTP 400"):
        await reply(pool)
    assert pool.backends[0].failures == 0


async def test_a_backend_killed_mid_stream_hands_the_reply_to_another() -> None:
    dying = ScriptedModel([["half a rep", BackendError("connection reset")]])
    spare = scripted(1, "whole")
    model = RetryingModel(BackendPool([dying, spare]), RetryPolicy(attempts=2, first_backoff=0))
    call = CallContext("s", "round")
    got = [p async for p in model.stream(MESSAGES, GenerationSettings(), (), call=call)]
    assert got[0] == "half a rep" and isinstance(got[1], StartOver) and got[2:] == ["whole0"]
