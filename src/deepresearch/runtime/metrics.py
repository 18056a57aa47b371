"""Prometheus metrics for one server: its own registry, no global state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from deepresearch.llm.base import BackendState
from deepresearch.runtime.admission import Admission

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800)


class _Backends(Collector):
    """Each LLM backend's call limit, calls in flight and latency, read when scraped."""

    def __init__(self, states: Callable[[], list[BackendState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "deepresearch_backend_call_limit",
            "Model calls a backend may have in flight now (0: no limit).",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "deepresearch_backend_calls_in_flight",
            "Model calls in flight on a backend.",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "deepresearch_backend_up", "1 while a backend is usable.", labels=["backend"]
        )
        ttft = GaugeMetricFamily(
            "deepresearch_backend_ttft_seconds",
            "Time to the first piece of a backend's latest call.",
            labels=["backend"],
        )
        for state in self._states():
            limit.add_metric([state.url], state.limit or 0)
            in_flight.add_metric([state.url], state.in_flight)
            healthy.add_metric([state.url], 0 if state.healthy is False else 1)
            if state.ttft_ms is not None:
                ttft.add_metric([state.url], state.ttft_ms / 1000)
        yield from (limit, in_flight, healthy, ttft)


class Metrics:
    def __init__(
        self, admission: Admission, backends: Callable[[], list[BackendState]] = list
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Backends(backends))
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
