"""A worker with DEEPRESEARCH_MAX_CONCURRENT=auto runs as many sessions as its adaptive
limit has slots, not as many as saq could (its bound's top): the limit gates dequeuing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepresearch.llm.limits import LimitBounds
from tests.distributed.cluster import Cluster
from tests.redis_server import RedisServer
from tests.support import Process, collect

TOP = 8  # DEEPRESEARCH_MAX_CONCURRENT_MAX: saq's concurrency for this worker


@pytest.fixture(scope="module")
def auto_cluster(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    cluster = Cluster(durable_redis, tmp_path_factory.mktemp("auto"), llm.url, corpus, "auto")
    cluster.env |= {
        "DEEPRESEARCH_MAX_CONCURRENT": "auto",
        "DEEPRESEARCH_MAX_CONCURRENT_MIN": "1",
        "DEEPRESEARCH_MAX_CONCURRENT_MAX": str(TOP),
        # The limit is not reconsidered during the test: it stays at its start.
        "DEEPRESEARCH_LLM_CONTROL_SECONDS": "3600",
    }
    try:
        cluster.start_node()
        cluster.start_worker()
        cluster.wait_for_workers(1)
        yield cluster
    finally:
        cluster.stop()


async def test_the_adaptive_limit_gates_what_the_worker_takes(auto_cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=auto_cluster.nodes[0].url, timeout=60) as client:
        health = (await client.get("/health")).json()
        slots = health["max_concurrent"]
        assert slots == LimitBounds.initial < TOP  # one backend, a new limit

        running: list[int] = []  # sessions `processing`, sampled while they run
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                listing = await client.get("/sessions", params={"status": "processing"})
                running.append(listing.json()["total"])
                await asyncio.sleep(0.02)  # a sampling period, not a wait for a race

        sampler = asyncio.create_task(sample())
        streams = await asyncio.gather(
            *(
                collect(
                    client,
                    "POST",
                    "/chat/stream",
                    json={"question": f"tok-auto{n} [sim:rounds=2] [sim:slow=20]"},
                )
                for n in range(3 * TOP)
            )
        )
        done.set()
        await sampler
        assert [s.types[-1] for s in streams] == ["completed"] * (3 * TOP)
    # Never more sessions running than the limit's slots (saq alone would run TOP),
    # and the slots were used side by side.
    assert 2 <= max(running) <= slots
