"""What the simulator reports: vLLM's Prometheus metrics, and totals for the benchmark."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sim_driver import Driver
from sim_engine import BLOCK_SIZE, TTFT_BUCKETS


class VllmCollector:
    """vLLM's Prometheus names, read from the engine at scrape time."""

    def __init__(self, driver: Driver, model: str, cache_metric: str) -> None:
        self.driver = driver
        self.model = model
        self.cache_metric = cache_metric  # kv (vLLM >= 0.10), gpu (older), both

    def collect(self) -> Iterable[Any]:
        engine = self.driver.engine
        totals = engine.totals
        labels = ["model_name", "engine"]
        values = [self.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge("vllm:num_requests_running", "Requests in model execution batches.",
                    len(engine.running))  # fmt: skip
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be processed.",
                    len(engine.waiting))  # fmt: skip
        usage = engine.pool.usage
        if self.cache_metric in ("kv", "both"):
            yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                        usage)  # fmt: skip
        if self.cache_metric in ("gpu", "both"):
            yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent.",
                        usage)  # fmt: skip
        # vLLM's info gauge: the cache's configuration as labels, the value always 1.
        info = {
            "block_size": str(BLOCK_SIZE),
            "num_gpu_blocks": str(engine.pool.num_blocks),
            "num_cpu_blocks": "0",
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "engine": "0",
        }
        config = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine "
                                   "CacheConfig", labels=list(info))  # fmt: skip
        config.add_metric(list(info.values()), 1.0)
        yield config
        yield counter("vllm:num_preemptions", "Cumulative number of preemptions.",
                      totals.preemptions)  # fmt: skip
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.",
                      totals.prefix_queries)  # fmt: skip
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.",
                      totals.prefix_hits)  # fmt: skip
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                      totals.prompt_tokens)  # fmt: skip
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      totals.generation_tokens)  # fmt: skip
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )  # fmt: skip
        success.add_metric([*values, "stop"], totals.finished)
        success.add_metric([*values, "abort"], totals.aborted)
        yield success
        buckets: list[tuple[str, float]] = [
            (repr(bound), count)
            for bound, count in zip(TTFT_BUCKETS, totals.ttft_buckets, strict=True)
        ]
        buckets.append(("+Inf", totals.ttft_count))
        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            labels=labels,
        )  # fmt: skip
        ttft.add_metric(values, buckets, sum_value=totals.ttft_sum)
        yield ttft


def stats(driver: Driver) -> dict[str, Any]:
    engine = driver.engine
    t = engine.totals
    busy = t.busy_seconds or 1e-9
    return {
        "sim_seconds": driver.clock(),
        "busy_seconds": t.busy_seconds,
        "kv_usage_mean": t.usage_seconds / busy,  # over the time the engine was busy
        "kv_usage_max": t.max_usage,
        "running_mean": t.running_seconds / busy,
        "waiting_mean": t.waiting_seconds / busy,
        "waiting_max": t.max_waiting,
        "preemptions": t.preemptions,
        "prefix_queries": t.prefix_queries,
        "prefix_hits": t.prefix_hits,
        "prompt_tokens": t.prompt_tokens,
        "generation_tokens": t.generation_tokens,
        "finished": t.finished,
        "aborted": t.aborted,
        "ttft_count": t.ttft_count,
        "ttft_mean": t.ttft_sum / t.ttft_count if t.ttft_count else None,
        "running": len(engine.running),
        "waiting": len(engine.waiting),
        "kv_usage": engine.pool.usage,
        "lag_max": driver.lag_max,
        "steps": driver.steps,
    }
