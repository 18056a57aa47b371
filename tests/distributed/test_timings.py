"""saq's timers and the lease, derived from DEEPRESEARCH_RECOVERY_SECONDS."""

from __future__ import annotations

import pytest

from deepresearch.runtime.dispatch import Timings


@pytest.mark.parametrize("recovery", [4, 6, 8, 30, 60, 600])
def test_a_dead_workers_job_is_requeued_within_the_recovery_figure(recovery: float) -> None:
    timings = Timings.for_recovery(recovery)
    # Found by the sweep once its heartbeat is stale, at the next sweep, after the
    # (cut) wait for an abort nobody acknowledges.
    assert timings.heartbeat + timings.sweep + timings.abort_wait <= recovery
    assert timings.heartbeat >= 1 and timings.sweep >= 1
    # The lease lapses with the heartbeat, and is renewed several times per TTL.
    assert timings.lease_ttl == timings.heartbeat
    assert timings.beat <= timings.lease_ttl / 3


def test_the_default_leaves_most_of_the_figure_to_the_heartbeat() -> None:
    timings = Timings.for_recovery(30)
    assert (timings.sweep, timings.heartbeat) == (5, 23)
