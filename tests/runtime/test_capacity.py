"""Capacity: session slots follow the backends' adaptive call limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from deepresearch.config import GenerationSettings, Settings
from deepresearch.llm.base import CallContext, Message
from deepresearch.llm.pool import BackendPool
from deepresearch.llm.signals import BackendSignals
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.capacity import Capacity
from tests.support import ScriptedModel


class Loaded(ScriptedModel):
    """A backend whose /metrics say what the test sets."""

    def __init__(self, replies: int = 0) -> None:
        super().__init__(["r"] * replies)
        self.reading = BackendSignals(0, 0, 0.2, 0, None, None)

    async def signals(self) -> BackendSignals | None:
        return self.reading


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, corpus=[], **values)  # type: ignore[arg-type]


async def test_slots_start_low_and_grow_with_demand_to_the_sum_of_the_limits(
    tmp_path: Path,
) -> None:
    first, second = Loaded(), Loaded()
    pool = BackendPool([first, second])
    admission = Admission(Capacity.initial_slots(settings(tmp_path)), max_queue=100)
    capacity = Capacity(settings(tmp_path, max_concurrent_max=24), admission, pool)
    assert capacity.limits() == [4, 4] and admission.max_concurrent == 8
    tickets = [admission.admit(f"s{n}") for n in range(30)]
    await capacity.step()
    assert capacity.limits() == [8, 8] and admission.max_concurrent == 16
    assert sum(t.state == "holding" for t in tickets) == 16  # the new slots went to the queue
    await capacity.step()  # 16 each; the slots are capped at MAX (24)
    assert admission.max_concurrent == 24
    first.reading = BackendSignals(0, 0, 0.2, 9, None, None)  # the first starts pre-empting
    await capacity.step()
    assert capacity.limits() == [12, 24] and admission.max_concurrent == 24  # capped at MAX
    assert [b.limiter.limit for b in pool.backends] == [12, 24]


async def test_a_fixed_number_keeps_a_fixed_cap(tmp_path: Path) -> None:
    pool = BackendPool([Loaded()], limit=3)
    admission = Admission(3, max_queue=10)
    capacity = Capacity(settings(tmp_path, max_concurrent=3), admission, pool)
    [admission.admit(f"s{n}") for n in range(8)]
    for _ in range(3):
        await capacity.step()
    assert admission.max_concurrent == 3 and pool.backends[0].limiter.limit == 3


async def test_with_auto_long_sessions_are_seated_few_by_the_kv_cache(tmp_path: Path) -> None:
    backend = Loaded(replies=4)
    backend.reading = BackendSignals(0, 0, 0.5, 0, None, None, kv_capacity=120_000)
    pool = BackendPool([backend])
    admission = Admission(Capacity.initial_slots(settings(tmp_path)), max_queue=100)
    capacity = Capacity(settings(tmp_path), admission, pool)
    tickets = [admission.admit(f"s{n}") for n in range(6)]
    assert sum(t.state == "holding" for t in tickets) == 4
    gate = pool.backends[0].limiter
    assert gate.seats  # auto seats sessions at the gate
    prompt: list[Message] = [{"role": "user", "content": "x" * 280_000}]  # ~80k tokens
    for n in range(4):
        call = CallContext(f"s{n}", "round")
        async for _ in pool.stream(prompt, GenerationSettings(), (), call=call):
            pass
    await capacity.step()  # four seated sessions of 80k tokens: room for two
    assert capacity.limits() == [2] and admission.max_concurrent == 2
    assert [gate.seated(f"s{n}") for n in range(4)] == [True, True, False, False]


async def test_an_ended_sessions_seat_goes_to_a_waiting_one(
    tmp_path: Path,
) -> None:
    backend = Loaded(replies=4)
    backend.reading = BackendSignals(0, 0, 0.5, 0, None, None, kv_capacity=120_000)
    pool = BackendPool([backend])
    values = {"max_concurrent_min": 3, "max_concurrent_max": 3}
    admission = Admission(3, max_queue=10)
    capacity = Capacity(settings(tmp_path, **values), admission, pool)
    gate = pool.backends[0].limiter
    gate.resize(2)
    prompt: list[Message] = [{"role": "user", "content": "x" * 280_000}]  # ~80k tokens

    async def call(session: str) -> None:
        async for _ in pool.stream(
            prompt, GenerationSettings(), (), call=CallContext(session, "round")
        ):
            pass

    await call("s0")
    await call("s1")  # both seated, both in their tools: the gate is full
    waiting = asyncio.create_task(call("s2"))
    await asyncio.sleep(0)
    assert not waiting.done()
    await capacity.step()  # the cache holds two of these prompts: the limit stays 2
    assert not waiting.done()
    pool.end_session("s0")  # its run ended
    await asyncio.wait_for(waiting, 60)
    assert capacity.limits() == [2] and not gate.seated("s0") and gate.seated("s2")
