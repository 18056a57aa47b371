"""Fair queueing across keys, and a Hypothesis state machine over admission: random
admits from several keys, releases of waiting and running sessions, and a resizing
limit. Counts always exact, positions truthful, order fair, FIFO within a key."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from deepresearch.errors import Overloaded
from deepresearch.runtime.admission import Admission, QuotaExceeded, Ticket


def test_one_key_with_many_questions_does_not_starve_the_others() -> None:
    admission = Admission(max_concurrent=2, max_queue=100)
    greedy = [admission.admit(f"g{n}", "greedy") for n in range(50)]
    late = [admission.admit("a", "ann"), admission.admit("b", "bob")]
    assert [t.state for t in greedy[:2]] == ["holding", "holding"]
    # Ann and Bob have nothing running: they are next, ahead of greedy's 48.
    assert (late[0].position, late[1].position) == (1, 2)
    assert greedy[2].position == 3
    admission.release(greedy[0])
    assert late[0].state == "holding"
    admission.release(greedy[1])
    assert late[1].state == "holding"
    admission.release(late[0])  # ann has none running now, but nothing waits for her
    assert greedy[2].state == "holding"


def test_round_robin_among_keys_with_equal_shares() -> None:
    admission = Admission(max_concurrent=1, max_queue=100)
    holder = admission.admit("h", "x")
    waiting = [admission.admit(f"{key}{n}", key) for n in range(2) for key in ("a", "b", "c")]
    order = [t.session_id for t in sorted(waiting, key=lambda t: t.position)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1"]
    granted = []
    current = holder
    for _ in waiting:
        admission.release(current)
        current = next(t for t in waiting if t.state == "holding")
        granted.append(current.session_id)
    assert granted == order


def test_per_key_quotas() -> None:
    admission = Admission(max_concurrent=4, max_queue=100, max_running_per_key=1,
                          max_queued_per_key=2)  # fmt: skip
    first = admission.admit("a0", "a")
    second = admission.admit("a1", "a")  # a free slot, but ann already runs one
    assert (first.state, second.state) == ("holding", "waiting")
    assert admission.admit("b0", "b").state == "holding"
    admission.admit("a2", "a")
    with pytest.raises(QuotaExceeded) as refused:
        admission.admit("a3", "a")
    assert refused.value.status_code == 429 and refused.value.retry_after >= 1
    admission.release(first)
    assert second.state == "holding"


KEYS = st.sampled_from(["", "ann", "bob", "cat"])


class AdmissionMachine(RuleBasedStateMachine):
    running_quota = 0

    def __init__(self) -> None:
        super().__init__()
        self.admission = Admission(
            max_concurrent=2, max_queue=8, max_running_per_key=self.running_quota
        )
        self.tickets: list[Ticket] = []
        self.count = 0

    def live(self, state: str) -> list[Ticket]:
        return [t for t in self.tickets if t.state == state]

    @rule(key=KEYS)
    def admit(self, key: str) -> None:
        self.count += 1
        before = self.admission.queued
        try:
            ticket = self.admission.admit(f"s{self.count}", key)
        except Overloaded:
            assert before == self.admission.max_queue
            return
        self.tickets.append(ticket)

    @precondition(lambda self: any(t.state == "holding" for t in self.tickets))
    @rule(data=st.data())
    def finish_a_running_session(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.live("holding")))
        waiting_before = {t: t.position for t in self.live("waiting")}
        self.admission.release(ticket)
        granted = [t for t in waiting_before if t.state == "holding"]
        assert len(granted) <= 1
        if granted:
            chosen = granted[0]
            # Fair: no other waiting key had fewer sessions running than the chosen one.
            running_now = {
                key: self.admission.running_for(key) for key in {t.key for t in waiting_before}
            }
            chosen_running = running_now[chosen.key] - 1  # before it took the slot
            quota = self.running_quota or 10**9
            assert chosen_running < quota
            assert all(
                running_now[t.key] >= chosen_running
                for t in waiting_before
                if t is not chosen and running_now[t.key] < quota
            )
            # FIFO within the key.
            assert all(
                t.arrival > chosen.arrival
                for t in waiting_before
                if t.key == chosen.key and t is not chosen
            )

    @precondition(lambda self: any(t.state == "waiting" for t in self.tickets))
    @rule(data=st.data())
    def give_up_waiting(self, data: st.DataObject) -> None:  # cancel, disconnect, timeout
        self.admission.release(data.draw(st.sampled_from(self.live("waiting"))))

    @rule(slots=st.integers(min_value=1, max_value=5))
    def resize(self, slots: int) -> None:
        self.admission.resize(slots)

    @rule(data=st.data())
    def release_twice(self, data: st.DataObject) -> None:
        released = self.live("released")
        if released:
            self.admission.release(data.draw(st.sampled_from(released)))  # a no-op

    @invariant()
    def counts_are_exact(self) -> None:
        holding, waiting = self.live("holding"), self.live("waiting")
        assert self.admission.busy == len(holding)
        assert self.admission.queued == len(waiting)
        for key in {t.key for t in self.tickets}:
            assert self.admission.running_for(key) == sum(t.key == key for t in holding)

    @invariant()
    def no_slot_is_idle_while_someone_waits(self) -> None:
        if self.admission.busy < self.admission.max_concurrent:
            # Only sessions held back by their key's running quota may wait.
            quota = self.running_quota
            for ticket in self.live("waiting"):
                assert quota and self.admission.running_for(ticket.key) >= quota

    @invariant()
    def positions_are_the_grant_order(self) -> None:
        waiting = self.live("waiting")
        assert sorted(t.position for t in waiting) == list(range(1, len(waiting) + 1))
        assert self.admission.order() == sorted(waiting, key=lambda t: t.position)
        for key in {t.key for t in waiting}:
            mine = sorted((t for t in waiting if t.key == key), key=lambda t: t.position)
            assert [t.arrival for t in mine] == sorted(t.arrival for t in mine)


class QuotaAdmissionMachine(AdmissionMachine):
    running_quota = 1


MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
AdmissionMachine.TestCase.settings = MACHINE_SETTINGS
QuotaAdmissionMachine.TestCase.settings = MACHINE_SETTINGS
test_admission_state_machine = AdmissionMachine.TestCase
test_admission_state_machine_with_a_running_quota = QuotaAdmissionMachine.TestCase
