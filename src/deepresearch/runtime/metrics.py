"""Prometheus metrics for one server: its own registry, no global state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deepresearch.runtime.admission import Admission

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800)


class Metrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        busy = Gauge("deepresearch_slots_busy", "Research slots in use.", registry=self.registry)
        busy.set_function(lambda: admission.busy)
        total = Gauge("deepresearch_slots", "Research slots on this node.", registry=self.registry)
        total.set_function(lambda: admission.max_concurrent)
        queued = Gauge(
            "deepresearch_queue_length", "Sessions waiting for a slot.", registry=self.registry
        )
        queued.set_function(lambda: admission.queued)
        self.queue_wait = Histogram(
            "deepresearch_queue_wait_seconds",
            "Time from admission to taking a slot.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "deepresearch_run_seconds",
            "Time a session held its slot.",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.sessions = Counter(
            "deepresearch_sessions",
            "Sessions ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "deepresearch_rejected",
            "Requests refused with 503 because the queue was full.",
            registry=self.registry,
        )
        self.events = Counter(
            "deepresearch_events", "Events emitted by all sessions.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
