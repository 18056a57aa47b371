"""Distributed mode against the LLM simulator: sessions per hour with 1, 2 and 4
workers, and how long a killed worker's sessions take to resume elsewhere.

Real processes throughout: a `redis-server` on a free loopback port, the simulator
(`bench/llm_simulator.py`), one API node (`deepresearch serve`) and N workers
(`deepresearch worker`), each with DEEPRESEARCH_MAX_CONCURRENT=--slots. Clients
post sessions to the node and read their SSE streams to the end.

    .venv/bin/python bench/distributed.py            # the figures in bench/README.md
    .venv/bin/python bench/distributed.py --quick    # a smoke run

Throughput: --per-slot sessions per worker slot, all posted at once; sessions per
hour = completed / wall time from the first post to the last terminal event; events
per second = SSE events the clients received (worker -> Redis -> node -> client) / the
same wall time.
Recovery: two workers, --slots long sessions between them (so the survivor has
room for all); once each has finished its second round the worker holding one of
them is killed (SIGKILL); for each of its sessions, the time from the kill to its
`resumed` event as its client sees it (the bound is DEEPRESEARCH_RECOVERY_SECONDS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.distributed.cluster import Cluster  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.support import TERMINAL, iter_sse, simulator, write_corpus  # noqa: E402


async def stream(
    client: httpx.AsyncClient, question: str, seen: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Post a session and read it to its terminal event; ``seen`` gets the client's
    receipt time of each event type's first occurrence."""
    events: list[dict[str, Any]] = []
    body = {"question": question, "on_disconnect": "continue"}
    async with client.stream("POST", "/chat/stream", json=body) as response:
        async for event in iter_sse(response):
            if event is None:
                continue
            events.append(event.data)
            if seen is not None:
                seen.setdefault(f"{event.type}:{event.data.get('round', '')}", time.monotonic())
            if event.type in TERMINAL:
                break
    return events


def make_cluster(
    redis: RedisServer, workdir: Path, llm: str, corpus: Path, prefix: str, args: argparse.Namespace
) -> Cluster:
    cluster = Cluster(redis, workdir / prefix, llm, corpus, prefix)
    cluster.env |= {
        "DEEPRESEARCH_MAX_CONCURRENT": str(args.slots),
        "DEEPRESEARCH_MAX_QUEUE": "10000",
        "DEEPRESEARCH_LOG_LEVEL": "WARNING",
    }
    return cluster


async def throughput(
    redis: RedisServer,
    workdir: Path,
    llm: str,
    corpus: Path,
    workers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cluster = make_cluster(redis, workdir, llm, corpus, f"t{workers}", args)
    cluster.env["DEEPRESEARCH_RECOVERY_SECONDS"] = "30"
    try:
        cluster.start_node()
        for _ in range(workers):
            cluster.start_worker()
        cluster.wait_for_workers(workers)
        count = workers * args.slots * args.per_slot
        question = "How is tok-b{n} treated? [sim:rounds={rounds}] [sim:slow={slow}]"
        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(
            base_url=cluster.nodes[0].url, timeout=600, limits=limits
        ) as client:
            started = time.monotonic()
            results = await asyncio.gather(
                *(
                    stream(client, question.format(n=n, rounds=args.rounds, slow=args.slow_ms))
                    for n in range(count)
                )
            )
            wall = time.monotonic() - started
        completed = sum(1 for events in results if events and events[-1]["type"] == "completed")
        delivered = sum(len(events) for events in results)
        return {
            "workers": workers,
            "slots": workers * args.slots,
            "sessions": count,
            "completed": completed,
            "wall_s": round(wall, 1),
            "sessions_per_hour": round(completed / wall * 3600),
            # SSE events worker -> Redis -> API node -> client, over the whole run
            "events_per_s": round(delivered / wall),
        }
    finally:
        cluster.stop()


async def recovery(
    redis: RedisServer,
    workdir: Path,
    llm: str,
    corpus: Path,
    seconds: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cluster = make_cluster(redis, workdir, llm, corpus, f"r{seconds}", args)
    cluster.env["DEEPRESEARCH_RECOVERY_SECONDS"] = str(seconds)
    try:
        cluster.start_node()
        cluster.start_worker()
        cluster.start_worker()
        cluster.wait_for_workers(2)
        count = args.slots  # the survivor has room for all of them, wherever they ran
        question = "How is tok-r{n} treated? [sim:rounds=60] [sim:slow={slow}]"
        seen: list[dict[str, float]] = [{} for _ in range(count)]
        async with httpx.AsyncClient(base_url=cluster.nodes[0].url, timeout=600) as client:
            tasks = [
                asyncio.create_task(
                    stream(client, question.format(n=n, slow=args.slow_ms), seen[n])
                )
                for n in range(count)
            ]
            deadline = time.monotonic() + 120
            while not all("round_start:3" in s for s in seen):
                if time.monotonic() > deadline:
                    raise RuntimeError("the sessions did not all reach their third round")
                await asyncio.sleep(0.05)
            listing = (await client.get("/sessions", params={"status": "processing"})).json()
            holders = [cluster.lease_holder(sid) for sid in listing["active_sessions"]]
            victim = next(h for h in holders if h)
            pid = int(victim.split(":")[1])
            moved = sum(1 for h in holders if h and f":{pid}:" in h)
            killed_at = time.monotonic()
            cluster.kill_worker(pid)
            while sum("resumed:" in " ".join(s) for s in seen) < moved:
                if time.monotonic() - killed_at > 4 * seconds:
                    raise RuntimeError("the sessions were not resumed")
                await asyncio.sleep(0.02)
            delays = sorted(
                next(t for key, t in s.items() if key.startswith("resumed:")) - killed_at
                for s in seen
                if any(key.startswith("resumed:") for key in s)
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "recovery_setting_s": seconds,
            "sessions_moved": moved,
            "first_resumed_s": round(delays[0], 1),
            "median_resumed_s": round(statistics.median(delays), 1),
            "last_resumed_s": round(delays[-1], 1),
        }
    finally:
        cluster.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--slots", type=int, default=4, help="DEEPRESEARCH_MAX_CONCURRENT")
    parser.add_argument("--per-slot", type=int, default=3, help="sessions per slot")
    parser.add_argument("--rounds", type=int, default=3, help="tool rounds per session")
    parser.add_argument("--slow-ms", type=int, default=40, help="simulator delay per piece")
    parser.add_argument("--recovery", default="10,30", help="recovery settings to measure")
    parser.add_argument("--quick", action="store_true", help="1 worker, 1 session per slot")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.per_slot, args.recovery = "1", 1, "6"
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        workdir = Path(scratch)
        corpus = write_corpus(workdir / "corpus")
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            with simulator() as sim:
                for workers in (int(n) for n in args.workers.split(",") if n):
                    row = await throughput(redis, workdir, sim.url, corpus, workers, args)
                    print(json.dumps({"throughput": row}), flush=True)
                for seconds in (int(n) for n in args.recovery.split(",") if n):
                    row = await recovery(redis, workdir, sim.url, corpus, seconds, args)
                    print(json.dumps({"recovery": row}), flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
