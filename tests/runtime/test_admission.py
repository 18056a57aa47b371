"""Admission: slots, a bounded FIFO queue with positions, timeouts, exact accounting."""

from __future__ import annotations

import asyncio

import pytest

from deepresearch.errors import Overloaded
from deepresearch.runtime.admission import Admission, QueueTimeout, Ticket


async def report_positions(admission: Admission, ticket: Ticket, seen: asyncio.Queue[int]) -> None:
    async for position in admission.wait_turn(ticket, timeout=5):
        await seen.put(position)


async def test_free_slots_are_taken_at_once_then_requests_queue_in_order() -> None:
    admission = Admission(max_concurrent=2, max_queue=5)
    first, second, third, fourth = (admission.admit(f"s{n}") for n in range(4))
    assert [t.state for t in (first, second, third, fourth)] == [
        "holding",
        "holding",
        "waiting",
        "waiting",
    ]
    assert (third.position, fourth.position) == (1, 2)
    assert (admission.busy, admission.queued, admission.saturated) == (2, 2, True)

    admission.release(first)
    assert third.state == "holding" and fourth.position == 1
    assert (admission.busy, admission.queued) == (2, 1)


async def test_full_queue_is_refused_with_retry_after_and_reserves_nothing() -> None:
    admission = Admission(max_concurrent=1, max_queue=1)
    admission.admit("running")
    admission.admit("waiting")
    with pytest.raises(Overloaded) as refused:
        admission.admit("refused")
    assert refused.value.retry_after >= 1
    assert (admission.busy, admission.queued) == (1, 1)


async def test_waiter_sees_each_new_position_then_gets_the_slot() -> None:
    admission = Admission(max_concurrent=1, max_queue=10)
    holder = admission.admit("holder")
    ahead = [admission.admit(f"a{n}") for n in range(2)]
    mine = admission.admit("mine")
    seen: asyncio.Queue[int] = asyncio.Queue()
    watcher = asyncio.create_task(report_positions(admission, mine, seen))
    assert await seen.get() == 3
    admission.release(holder)  # a0 takes the slot
    assert await seen.get() == 2
    admission.release(ahead[0])  # a1 takes it
    assert await seen.get() == 1
    admission.release(ahead[1])  # mine takes it
    await watcher
    assert seen.empty()
    assert mine.state == "holding" and admission.busy == 1 and admission.queued == 0


async def test_queue_timeout_leaves_the_queue_and_others_move_up() -> None:
    admission = Admission(max_concurrent=1, max_queue=10)
    admission.admit("holder")
    impatient = admission.admit("impatient")
    behind = admission.admit("behind")
    with pytest.raises(QueueTimeout):
        async for _ in admission.wait_turn(impatient, timeout=0.05):
            pass
    admission.release(impatient)
    assert behind.position == 1 and admission.queued == 1 and admission.busy == 1


async def test_release_is_idempotent_in_every_state() -> None:
    admission = Admission(max_concurrent=1, max_queue=10)
    holder = admission.admit("holder")
    waiter = admission.admit("waiter")
    admission.release(waiter)
    admission.release(waiter)
    assert admission.queued == 0 and admission.busy == 1
    admission.release(holder)
    admission.release(holder)
    assert admission.busy == 0
    assert holder.state == waiter.state == "released"


async def test_position_reports_are_spaced_but_the_slot_is_never_held_back() -> None:
    admission = Admission(max_concurrent=1, max_queue=10)
    holder = admission.admit("holder")
    ahead = [admission.admit(f"a{n}") for n in range(3)]
    mine = admission.admit("mine")
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def watch() -> None:
        async for position in admission.wait_turn(mine, timeout=10, interval=0.3):
            await seen.put((position, loop.time()))

    watcher = asyncio.create_task(watch())
    first, first_at = await seen.get()
    assert first == 4
    admission.release(holder)  # 3
    admission.release(ahead[0])  # 2: both moves inside one interval
    second, second_at = await seen.get()
    assert second == 2 and second_at - first_at >= 0.3  # only the latest, after the pause
    admission.release(ahead[1])
    admission.release(ahead[2])
    await watcher
    assert mine.state == "holding" and seen.empty()


async def test_the_slot_is_never_held_back_by_the_report_interval() -> None:
    """News inside the interval waits for it; the slot does not. The interval here is
    an hour: a watcher that waited it out would miss the (generous) deadline."""
    admission = Admission(max_concurrent=1, max_queue=10)
    holder = admission.admit("holder")
    ahead = admission.admit("ahead")
    mine = admission.admit("mine")
    seen: list[int] = []
    reported = asyncio.Event()

    async def watch() -> None:
        async for position in admission.wait_turn(mine, timeout=7200, interval=3600):
            seen.append(position)
            reported.set()

    watcher = asyncio.create_task(watch())
    await reported.wait()
    assert seen == [2]
    admission.release(holder)  # position 1: news, too soon to tell
    await asyncio.sleep(0)
    admission.release(ahead)  # mine holds the slot: no waiting out the hour
    await asyncio.wait_for(watcher, timeout=60)
    assert mine.state == "holding" and seen == [2]


async def test_growing_hands_new_slots_to_the_queue_and_shrinking_waits_for_holders() -> None:
    admission = Admission(max_concurrent=1, max_queue=5)
    running = admission.admit("running")
    waiting = [admission.admit(f"w{n}") for n in range(3)]
    admission.resize(3)
    assert [t.state for t in waiting] == ["holding", "holding", "waiting"]
    assert waiting[2].position == 1 and admission.busy == 3
    admission.resize(1)  # nobody running is stopped...
    assert admission.busy == 3 and waiting[2].state == "waiting"
    admission.release(running)  # ...but a freed slot is not handed on while over the limit
    admission.release(waiting[0])
    assert waiting[2].state == "waiting" and admission.busy == 1
    admission.release(waiting[1])  # now within the limit: the slot passes straight on
    assert waiting[2].state == "holding" and admission.busy == 1
