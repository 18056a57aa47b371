"""Seats at a backend's gate, and the limit the KV cache sets: long contexts admitted few."""

from __future__ import annotations

import asyncio

from deepresearch.config import GenerationSettings
from deepresearch.llm.base import CallContext, Message
from deepresearch.llm.limits import AdaptiveLimit, CallLimiter, LimitBounds, Reading, kv_ceiling
from deepresearch.llm.pool import BackendPool
from deepresearch.llm.signals import BackendSignals, parse_vllm_metrics
from tests.support import ScriptedModel


async def waits(gate: CallLimiter, priority: float, holder: str) -> asyncio.Task[None]:
    """A call that queues at ``gate``; the task ends when it is let in."""
    task = asyncio.create_task(gate.acquire(priority, holder))
    await asyncio.sleep(0)
    return task


async def test_a_seated_session_keeps_its_place_between_calls_and_younger_ones_wait() -> None:
    gate = CallLimiter(2, seats=True)
    for age, session in enumerate(("old", "middle")):
        await gate.acquire(age, session)
        gate.release(session)  # off to run a tool: its seat stays
    assert gate.in_flight == 0 and gate.full
    young = await waits(gate, 2, "young")
    assert not young.done()  # no slipping in while the others run their tools
    await gate.acquire(0, "old")  # its next round takes its own seat at once
    assert gate.in_flight == 1 and not young.done()
    gate.release("old")
    gate.unseat("middle")  # that session ended
    await asyncio.sleep(0)
    assert young.done() and gate.seated("young") and not gate.seated("middle")


async def test_a_shrinking_limit_takes_idle_seats_back_from_the_youngest_first() -> None:
    gate = CallLimiter(3, seats=True)
    for age, session in enumerate(("a", "b", "c")):
        await gate.acquire(age, session)
    gate.release("c")
    gate.release("b")
    gate.resize(1)  # "a" is still in its call: the idle seats of "c" then "b" go
    assert [gate.seated(s) for s in ("a", "b", "c")] == [True, False, False]
    b = await waits(gate, 1, "b")
    assert not b.done()  # "a" holds the only seat
    gate.release("a")
    gate.unseat("a")
    await asyncio.sleep(0)
    assert b.done()


async def test_a_session_fanning_out_counts_every_call_against_the_limit() -> None:
    gate = CallLimiter(2, seats=True)
    await gate.acquire(0, "s")
    await gate.acquire(0, "s")  # a second page summary at once: the last place
    third = await waits(gate, 0, "s")
    assert not third.done() and gate.in_flight == 2
    gate.release("s")
    await asyncio.sleep(0)
    assert third.done() and gate.in_flight == 2


async def test_without_seats_a_call_frees_its_place_when_it_ends() -> None:
    gate = CallLimiter(1)
    await gate.acquire(0, "old")
    gate.release("old")
    await gate.acquire(5, "young")  # nobody keeps a seat
    assert not gate.seated("old") and gate.in_flight == 1


def kv(capacity: float | None, waiting: float = 0) -> BackendSignals:
    return BackendSignals(waiting, 0, 0.5, 0, None, None, kv_capacity=capacity)


def test_the_kv_cache_caps_the_limit_at_the_sessions_it_holds() -> None:
    assert kv_ceiling(Reading(1, True, kv(120_000), contexts=(40_000, 50_000, 60_000))) == 3
    assert kv_ceiling(Reading(1, True, kv(120_000), contexts=(90_000, 95_000))) == 2
    assert kv_ceiling(Reading(1, True, kv(None), contexts=(90_000,))) is None  # unknown cache
    assert kv_ceiling(Reading(1, True, kv(120_000))) is None  # nobody seated yet


def calls(contexts: tuple[float, ...], calling: int | None = None) -> Reading:
    """A reading with sessions waiting, ``calling`` of the seated ones in a model call."""
    in_call = len(contexts) if calling is None else calling
    return Reading(in_call, True, kv(120_000), contexts=contexts, calling=in_call)


def test_long_contexts_bring_the_limit_down_and_hold_it_there_under_demand() -> None:
    control = AdaptiveLimit(LimitBounds(initial=4, maximum=64))
    assert control.observe(calls((2_000.0,) * 4)) == 8  # slow start
    assert control.observe(calls((30_000.0,) * 6)) == 4  # the prompts grew round by round
    longer = (55_000.0, 60_000.0, 65_000.0, 70_000.0)
    assert [control.observe(calls(longer)) for _ in range(3)] == [2, 2, 2]
    # New, short sessions seated in their place: it grows again, one at a time.
    fresh = (60_000.0, 5_000.0, 5_000.0)
    assert [control.observe(calls(fresh)) for _ in range(2)] == [3, 4]


def test_sessions_that_spend_their_time_in_tools_are_seated_more() -> None:
    always = AdaptiveLimit(LimitBounds(initial=2))
    toolbound = AdaptiveLimit(LimitBounds(initial=2))
    contexts = (40_000.0,) * 4
    for _ in range(10):
        always.observe(calls(contexts))
        toolbound.observe(calls(contexts, calling=1))  # three of four in a tool at a time
    assert always.limit == 3  # the cache holds three whole prompts
    assert toolbound.limit > always.limit  # but need only hold those in a call


def test_the_kv_capacity_comes_from_vllms_cache_config_info() -> None:
    page = """
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="7500"} 1.0
"""
    signals = parse_vllm_metrics(page)
    assert signals is not None and signals.kv_capacity == 120_000 and signals.waiting == 2
    unprofiled = page.replace('num_gpu_blocks="7500"', 'num_gpu_blocks="None"')
    found = parse_vllm_metrics(unprofiled)
    assert found is not None and found.kv_capacity is None


MESSAGES: list[Message] = [{"role": "user", "content": "x" * 7_000}]  # ~2,000 tokens


async def call(pool: BackendPool, session: str) -> None:
    context = CallContext(session, "round")
    async for _ in pool.stream(MESSAGES, GenerationSettings(), (), call=context):
        pass


async def test_a_session_that_ends_gives_up_its_seat_at_once() -> None:
    pool = BackendPool([ScriptedModel(["r"] * 10)], limit=2)
    gate = pool.backends[0].limiter
    gate.seats = True
    await call(pool, "first")
    await call(pool, "second")
    assert gate.full and gate.in_flight == 0  # both seated, both in their tools
    assert pool.contexts(pool.backends[0]) == (2_000.0, 2_000.0)  # characters / 3.5
    third = asyncio.create_task(call(pool, "third"))
    await asyncio.sleep(0)
    assert not third.done()  # idle seats count: it waits
    pool.end_session("second")
    await asyncio.wait_for(third, 60)
    assert gate.seated("first") and gate.seated("third") and not gate.seated("second")


async def test_a_seated_session_stays_home_even_when_its_home_looks_full() -> None:
    pool = BackendPool([ScriptedModel(["a"] * 4), ScriptedModel(["b"] * 4)], limit=1)
    for backend in pool.backends:
        backend.limiter.seats = True
    await call(pool, "s")
    home = pool.choose("s")
    assert home.limiter.full  # its own idle seat fills it
    await call(pool, "s")
    assert home is pool.backends[0] and pool.choose("s") is home


def test_a_falling_hit_rate_is_no_thrash_while_every_seated_prompt_fits() -> None:
    def lookups(queries: float, hit: float, contexts: tuple[float, ...]) -> Reading:
        signals = BackendSignals(0, 0, 0.3, 0, queries, hit, kv_capacity=120_000)
        return Reading(4, True, signals, contexts=contexts, calling=len(contexts))

    # Four prompts of 10k fit 120k (it grows 9, 10, 11); four of 35k do not (the ceiling
    # holds it at 4, and then it backs off).
    roomy, crowded = (10_000.0,) * 4, (35_000.0,) * 4
    for contexts, expected in ((roomy, 11), (crowded, 3)):
        control = AdaptiveLimit(LimitBounds(initial=8))
        control.slow_start = False
        control.observe(lookups(0, 0, contexts))
        control.observe(lookups(10_000, 9_000, contexts))  # 90%: the first round's prompts
        # New tool results to prefill: 30% cached. Thrash only when the prompts overflow.
        assert control.observe(lookups(20_000, 12_000, contexts)) == expected


async def test_a_waiter_cancelled_while_the_gate_wakes_leaves_it_consistent() -> None:
    gate = CallLimiter(1)
    await gate.acquire(0, "a")
    waiter = asyncio.create_task(gate.acquire(1, "b"))
    await asyncio.sleep(0)
    waiter.cancel()  # its turn is cancelled now; the task sees it on its next step
    gate.release("a")  # a wake-up before then drops the cancelled turn
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled() and gate.waiting == 0 and gate.in_flight == 0
