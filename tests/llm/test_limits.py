"""The adaptive call limit, driven by made-up readings (it keeps no clock of its own)."""

from __future__ import annotations

import asyncio

from deepresearch.llm.limits import AdaptiveLimit, CallLimiter, LimitBounds, Reading
from deepresearch.llm.signals import BackendSignals


def vllm(waiting: float = 0, kv: float = 0.3, preemptions: float = 0) -> BackendSignals:
    return BackendSignals(waiting, 0, kv, preemptions, None, None)


def busy(signals: BackendSignals | None = None, **latency: float) -> Reading:
    """A reading of a backend with calls waiting; latency readings mean no /metrics."""
    if signals is None and not latency:
        signals = vllm()
    return Reading(in_flight=8, demand=True, signals=signals, **latency)


def test_it_rises_quickly_under_headroom_then_holds_at_its_bound() -> None:
    control = AdaptiveLimit(LimitBounds(initial=4, maximum=40))
    seen = [control.observe(busy()) for _ in range(6)]
    assert seen == [8, 16, 32, 40, 40, 40]


def test_without_demand_it_does_not_grow() -> None:
    control = AdaptiveLimit(LimitBounds(initial=4))
    idle = Reading(in_flight=1, demand=False, signals=vllm())
    assert [control.observe(idle) for _ in range(5)] == [4] * 5


def test_preemptions_back_it_off_and_end_the_slow_start() -> None:
    control = AdaptiveLimit(LimitBounds(initial=16))
    control.observe(busy(vllm(preemptions=5)))  # 32: the first reading sets the count
    assert control.observe(busy(vllm(preemptions=9))) == 24  # pre-empted: a quarter off
    assert control.observe(busy(vllm(preemptions=12))) == 24  # cooling: signals lag
    assert control.observe(busy(vllm(preemptions=12))) == 25  # calm again: one at a time
    assert control.observe(busy(vllm(preemptions=12))) == 26


def test_a_queue_for_memory_backs_it_off_but_a_blip_or_a_prefill_burst_does_not() -> None:
    control = AdaptiveLimit(LimitBounds(initial=10))
    control.slow_start = False
    assert control.observe(busy(vllm(waiting=5, kv=0.85))) == 10  # one long reading: hold
    assert control.observe(busy(vllm(waiting=6, kv=0.85))) == 7  # it stayed long: back off
    assert control.observe(busy(vllm(waiting=0))) == 8
    # A queue behind a burst of prefills, with the cache far from full, drains by itself.
    assert control.observe(busy(vllm(waiting=20, kv=0.3))) == 9
    assert control.observe(busy(vllm(waiting=20, kv=0.3))) == 10


def test_a_full_kv_cache_stops_growth_without_backing_off() -> None:
    control = AdaptiveLimit(LimitBounds(initial=10))
    assert [control.observe(busy(vllm(kv=0.97))) for _ in range(3)] == [10, 10, 10]


def test_without_metrics_latency_against_the_unloaded_baseline_decides() -> None:
    control = AdaptiveLimit(LimitBounds(initial=4))
    unloaded = Reading(in_flight=1, demand=True, signals=None, ttft=0.2, gap=0.01)
    assert control.observe(unloaded) == 8
    assert control.observe(busy(ttft=0.3, gap=0.015)) == 16  # a little slower: fine
    assert control.observe(busy(ttft=0.4, gap=0.04)) == 12  # gaps 4x the baseline: back off
    control.observe(busy(ttft=0.4, gap=0.04))  # cooling
    assert control.observe(busy(ttft=2.0, gap=0.01)) == 9  # a queue before the first token


def test_it_respects_its_floor_and_recovers_after_an_outage() -> None:
    control = AdaptiveLimit(LimitBounds(initial=4, minimum=2, maximum=64))
    for count in range(1, 12):
        control.observe(busy(vllm(preemptions=count * 10)))
    assert control.limit == 2
    control.restart()  # the backend came back
    assert [control.observe(busy(vllm(preemptions=0))) for _ in range(4)] == [4, 8, 16, 32]


async def test_the_gate_resizes_live_and_admits_waiters_in_order() -> None:
    gate = CallLimiter(1)
    await gate.acquire()
    order: list[int] = []

    async def call(n: int) -> None:
        async with gate.held():
            order.append(n)

    waiting = [asyncio.create_task(call(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    gate.resize(3)  # two more may go now, first come first
    await asyncio.sleep(0)
    assert order == [0, 1]
    gate.release()
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2] and gate.in_flight == 0


async def test_a_cancelled_waiter_leaves_no_permit_behind() -> None:
    gate = CallLimiter(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate.release()
    assert gate.in_flight == 0 and gate.waiting == 0


def hits(queries: float, hit: float) -> BackendSignals:
    return BackendSignals(0, 0, 0.3, 0, queries, hit)


def test_prefix_cache_thrash_backs_it_off() -> None:
    control = AdaptiveLimit(LimitBounds(initial=8))
    control.slow_start = False
    control.observe(busy(hits(0, 0)))  # 9: the first reading only sets the counters
    assert control.observe(busy(hits(10_000, 8_000))) == 10  # 80% of prompt tokens cached
    assert control.observe(busy(hits(11_000, 8_800))) == 11  # too few lookups to judge
    assert control.observe(busy(hits(20_000, 15_000))) == 12  # 70% since the last judgement
    assert control.observe(busy(hits(30_000, 18_000))) == 9  # 30%: they evict each other


async def test_the_oldest_sessions_calls_go_first_when_the_gate_is_full() -> None:
    gate = CallLimiter(1)
    await gate.acquire()
    order: list[str] = []

    async def call(name: str, age: float) -> None:
        async with gate.held(age):
            order.append(name)

    waiting = [
        asyncio.create_task(call(name, age))
        for name, age in (("young", 9.0), ("old", 1.0), ("middle", 5.0), ("old again", 1.0))
    ]
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*waiting)
    assert order == ["old", "old again", "middle", "young"]
