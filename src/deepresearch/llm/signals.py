"""What a backend says of its own load: vLLM's Prometheus ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Sample names as vLLM exports them; each is summed over its label sets (one per model).
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, then old
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
# An info gauge: the KV cache's configuration in its labels (one set per engine).
CACHE_CONFIG = "vllm:cache_config_info"


@dataclass(frozen=True)
class BackendSignals:
    """One reading of a backend's load; counters are totals since it started."""

    waiting: float
    running: float
    kv_usage: float | None  # 0..1
    preemptions: float | None
    prefix_queries: float | None
    prefix_hits: float | None
    kv_capacity: float | None = None  # tokens the KV cache holds: blocks x block size


def parse_vllm_metrics(text: str) -> BackendSignals | None:
    """The signals in a ``/metrics`` page; None when it is not vLLM's."""
    totals: dict[str, float] = {}
    capacity: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == CACHE_CONFIG:
                    engine = _cache_tokens(sample.labels)
                    if engine is not None:
                        capacity = (capacity or 0.0) + engine
                elif sample.name.startswith("vllm:"):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    except ValueError:
        return None
    if WAITING not in totals:
        return None

    def first(names: tuple[str, ...]) -> float | None:
        return next((totals[name] for name in names if name in totals), None)

    return BackendSignals(
        waiting=totals[WAITING],
        running=totals.get(RUNNING, 0.0),
        kv_usage=first(KV_USAGE),
        preemptions=totals.get(PREEMPTIONS),
        prefix_queries=first(PREFIX_QUERIES),
        prefix_hits=first(PREFIX_HITS),
        kv_capacity=capacity,
    )


def _cache_tokens(labels: dict[str, str]) -> float | None:
    """Tokens one engine's KV cache holds, from ``cache_config_info``'s labels."""
    try:
        tokens = float(labels["num_gpu_blocks"]) * float(labels["block_size"])
    except (KeyError, ValueError):  # absent, or "None" before the cache is profiled
        return None
    return tokens if tokens > 0 else None
