"""Serving benchmark: research sessions against the vLLM simulator, every contender side by side.

Usage: python bench/serving.py [--quick] [--time-scale 100] [--shapes short,medium,long]
       [--only NAME,...] [--out bench/results]        (``make bench-serving`` installs and runs)
       python bench/serving.py --headroom-only --headroom-clients 64,96,128 --auto-max 128

For each workload shape (``workload.SHAPES``: short, medium and long contexts) one simulated
vLLM (``vllm_sim.py``) serves, in turn, a burst of N research sessions from:

- ``seed``: the original note's server (``baselines/seed_server.py``: Semaphore(3));
- ``fixed 3`` and a sweep of fixed caps: deepresearch with ``DEEPRESEARCH_MAX_CONCURRENT=C``;
- ``auto``: ``DEEPRESEARCH_MAX_CONCURRENT=auto`` ("not available" where the server refuses it);
- ``no cap``: a cap of 1024 and a queue as large;
- ``langgraph``: the same loop as a LangGraph graph on ``langgraph dev``, at its default jobs
  per worker (1) and at langgraph-api's production default (10).

Then, on two simulated backends of different speed (1.0 and 0.5) with the medium shape:
deepresearch at the best fixed cap, no cap and auto, how much each backend served; and one
run where the slower backend is killed a third of the way through: sessions lost.

Each contender runs on a fresh server process; the simulator is reset between runs (cache,
counters). Times are simulated seconds (wall seconds times the time scale). The run talks
only to 127.0.0.1, bounds every wait, and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import serving_procs  # noqa: E402
import serving_report  # noqa: E402
import workload  # noqa: E402
from serving_procs import (  # noqa: E402
    NO_CAP,
    BenchError,
    Contender,
    Proc,
    Processes,
    start_contender,
    start_simulator,
)
from serving_sessions import Result, Session, measure, run_burst, sim_call  # noqa: E402

# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    sessions: dict[str, int]
    sweep: dict[str, list[int]]
    two_backend_sessions: int
    headroom_sessions: int
    headroom_sweep: list[int]
    deadlock_sessions: int  # the seed's burst on the headroom backend that it cannot finish


DEADLOCK_WALL = 60.0  # wall seconds the seed gets with 64 clients (an hour simulated at 60x)
HEADROOM_KV = 960_000  # tokens of KV cache in the "headroom" scenario (8x the default)
FULL = Plan(
    sessions={"short": 24, "medium": 16, "long": 6},
    sweep={"short": [6, 8, 12, 16, 24], "medium": [2, 4, 6, 8, 12], "long": [1, 2, 4]},
    two_backend_sessions=16,
    headroom_sessions=32,
    headroom_sweep=[3, 16, 32],
    deadlock_sessions=64,
)
QUICK = Plan(
    sessions={"short": 8, "medium": 6, "long": 3},
    sweep={"short": [8], "medium": [4], "long": [2]},
    two_backend_sessions=6,
    headroom_sessions=16,
    headroom_sweep=[3, 16],
    deadlock_sessions=0,
)


def contenders(shape: str, plan: Plan) -> list[Contender]:
    fixed = sorted({3, *plan.sweep[shape]})
    return [
        Contender("seed", "seed"),
        *(Contender(f"fixed {c}", "deepresearch", cap=c) for c in fixed),
        Contender("auto", "deepresearch", cap="auto"),
        Contender("no cap", "deepresearch", cap=NO_CAP),
        Contender("langgraph", "langgraph"),
        Contender("langgraph x10", "langgraph", jobs=10),
    ]


# --------------------------------------------------------------------------- runs


@dataclass
class Bench:
    args: argparse.Namespace
    plan: Plan
    procs: Processes
    results: list[Result] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(message, flush=True)

    async def run_one(
        self, shape: str, contender: Contender, sims: list[Proc], count: int,
        scenario: str | None = None, kill_after: float | None = None,
    ) -> Result:  # fmt: skip
        """``count`` sessions of workload ``shape``, reported under ``scenario`` (the shape)."""
        label = contender.name
        scenario = scenario or shape
        await sim_call(sims, "/sim/reset", post=True)
        wall0 = time.monotonic()
        server = start_contender(self.procs, contender, [s.url + "/v1" for s in sims], scenario)
        if server is None:
            self.log(f"  {label:<16} not available (the server refused to start)")
            result = Result(scenario, label, available=False, note="the server refused to start")
            self.results.append(result)
            return result
        # The same trajectories for every contender of a shape: seeds from the shape only.
        questions = [workload.question(shape, n) for n in range(count)]
        on_progress = None
        if kill_after is not None:
            on_progress = self.killer(sims[-1], count, kill_after)
        began = time.monotonic()
        peaks: dict[str, int] = {}
        watcher = None
        if contender.kind == "deepresearch":
            watcher = asyncio.create_task(watch_health(server.url, peaks))
        try:
            sessions = await run_burst(
                contender.kind, server.url, questions, self.args.run_timeout, on_progress
            )
        finally:
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            server.stop()
        stats = await sim_call(sims, "/sim/stats")
        result = measure(
            scenario, label, sessions, began, self.args.time_scale, stats, time.monotonic() - wall0
        )
        result.slots_max = peaks.get("slots")
        result.active_max = peaks.get("active")
        result.call_limit_max = peaks.get("call_limit")
        result.load_average = os.getloadavg()[0]
        self.results.append(result)
        self.log(serving_report.line(result))
        return result

    def killer(self, victim: Proc, count: int, fraction: float) -> Any:
        async def watch(sessions: list[Session]) -> None:
            # Sessions are plain records the client fills in; a 50 ms poll is cheap and bounded
            # by the burst's own timeout.
            while sum(s.outcome == "completed" for s in sessions) < count * fraction:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            self.log(f"  killing {victim.name} ({victim.url}) mid-run")
            victim.stop(signal.SIGKILL)

        return watch

    async def shape(self, shape: str) -> None:
        count = self.plan.sessions[shape]
        self.log(f"\n== {shape}: {count} sessions at once, one backend (speed 1.0)")
        sim = start_simulator(self.procs, f"sim-{shape}", self.args.time_scale, 1.0)
        try:
            for contender in contenders(shape, self.plan):
                if self.args.only and contender.name not in self.args.only:
                    continue
                await self.run_one(shape, contender, [sim], count)
        finally:
            sim.stop()

    def best_fixed(self, shape: str) -> int:
        fixed = [r for r in self.results if r.shape == shape and r.contender.startswith("fixed ")]
        best = max(fixed, key=lambda r: r.sessions_per_hour or 0.0, default=None)
        return int(best.contender.split()[1]) if best else 4

    async def two_backends(self) -> None:
        shape = "medium"
        count = self.plan.two_backend_sessions
        cap = 2 * self.best_fixed(shape)
        label = "2 backends"
        self.log(f"\n== {label}: {shape}, {count} sessions, speeds 1.0 and 0.5")
        for contender in [
            Contender(f"fixed {cap}", "deepresearch", cap=cap),
            Contender("auto", "deepresearch", cap="auto"),
            Contender("no cap", "deepresearch", cap=NO_CAP),
        ]:
            if self.args.only and contender.name not in self.args.only:
                continue
            fast = start_simulator(self.procs, "sim-fast", self.args.time_scale, 1.0)
            slow = start_simulator(self.procs, "sim-slow", self.args.time_scale, 0.5)
            try:
                await self.run_one(shape, contender, [fast, slow], count, scenario=label)
            finally:
                fast.stop()
                slow.stop()
        self.log(f"\n== kill: {shape}, {count} sessions, the slower backend killed mid-run")
        for contender in [
            Contender(f"fixed {cap}", "deepresearch", cap=cap),
            Contender("auto", "deepresearch", cap="auto"),
        ]:
            if self.args.only and contender.name not in self.args.only:
                continue
            fast = start_simulator(self.procs, "sim-fast", self.args.time_scale, 1.0)
            slow = start_simulator(self.procs, "sim-slow", self.args.time_scale, 0.5)
            try:
                await self.run_one(shape, contender, [fast, slow], count, "kill", 1 / 3)
            finally:
                fast.stop()
                slow.stop()

    async def headroom(self) -> None:
        """A backend with room to spare: eight times the KV cache (say FP8 KV on a bigger
        deployment), the same step costs; where batching many sessions pays."""
        shape, count = "short", self.plan.headroom_sessions
        label = "headroom"
        self.log(
            f"\n== {label}: {shape}, {count} sessions, one backend with {HEADROOM_KV:,} KV tokens"
        )
        sim = start_simulator(
            self.procs, "sim-headroom", self.args.time_scale, 1.0, "--kv-tokens", str(HEADROOM_KV)
        )
        try:
            for contender in [
                Contender("seed", "seed"),
                *(Contender(f"fixed {c}", "deepresearch", cap=c) for c in self.plan.headroom_sweep),
                Contender("auto", "deepresearch", cap="auto"),
                Contender("no cap", "deepresearch", cap=NO_CAP),
            ]:
                if self.args.only and contender.name not in self.args.only:
                    continue
                await self.run_one(shape, contender, [sim], count, scenario=label)
            await self.headroom_clients(shape, sim)
            await self.seed_deadlock(shape, sim)
        finally:
            sim.stop()

    async def headroom_clients(self, shape: str, sim: Proc) -> None:
        """``auto`` and no cap with more clients on the same backend (``--headroom-clients``).
        The seed is not run again: it runs 3 sessions whatever the number of clients, so its
        rate at ``headroom_sessions`` clients (above, same run) is its capacity; with more than
        ~37 clients it deadlocks (``seed_deadlock``)."""
        for count in self.args.headroom_clients:
            if count == self.plan.headroom_sessions:
                continue
            label = f"headroom x{count}"
            self.log(f"\n== {label}: {shape}, {count} sessions, the same backend")
            for contender in [
                Contender("auto", "deepresearch", cap="auto"),
                Contender("no cap", "deepresearch", cap=NO_CAP),
            ]:
                if self.args.only and contender.name not in self.args.only:
                    continue
                await self.run_one(shape, contender, [sim], count, scenario=label)

    async def seed_deadlock(self, shape: str, sim: Proc) -> None:
        """The seed with more clients than its thread pool has threads to spare: blocked
        ``Semaphore.acquire`` calls hold every thread and the running sessions cannot take
        their next step. Reported as its own row, with a shorter wall limit (nothing moves)."""
        count = self.plan.deadlock_sessions
        contender = Contender("seed", "seed")
        if not count or (self.args.only and contender.name not in self.args.only):
            return
        label = f"seed x{count}"
        self.log(f"\n== {label}: the seed with {count} clients on the headroom backend")
        timeout = self.args.run_timeout
        self.args.run_timeout = min(timeout, DEADLOCK_WALL)
        try:
            await self.run_one(shape, contender, [sim], count, scenario=label)
        finally:
            self.args.run_timeout = timeout

    async def without_metrics(self) -> None:
        """``auto`` on a backend without /metrics (llama.cpp, hosted APIs): latency only."""
        shape = "medium"
        count = self.plan.sessions[shape]
        contender = Contender("auto", "deepresearch", cap="auto")
        if self.args.only and contender.name not in self.args.only:
            return
        self.log(f"\n== no /metrics: {shape}, {count} sessions, one backend hiding /metrics")
        sim = start_simulator(
            self.procs, "sim-nometrics", self.args.time_scale, 1.0, "--no-metrics"
        )
        try:
            await self.run_one(shape, contender, [sim], count, "no /metrics")
        finally:
            sim.stop()


async def watch_health(url: str, peaks: dict[str, int]) -> None:
    """Poll a deepresearch server's ``/health`` (keys are off: details for everyone) and keep
    the peaks of its session slots, running sessions and backend call limits."""

    def peak(key: str, value: Any) -> None:
        if isinstance(value, int):
            peaks[key] = max(peaks.get(key, value), value)

    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            with suppress(httpx.HTTPError, ValueError):
                health = (await client.get(f"{url}/health")).json()
                peak("slots", health.get("max_concurrent"))
                peak("active", health.get("active_sessions"))
                for backend in health.get("llm", {}).get("backends") or []:
                    if isinstance(backend, dict):
                        peak("call_limit", backend.get("limit"))
            await asyncio.sleep(0.25)


def write_corpus(path: Path) -> None:
    record = {
        "id": "bench:1",
        "source": "bench",
        "url": "https://example.org/1",
        "title": "Benchmark record",
        "year": "2024",
        "text": "A benchmark record.",
    }
    path.write_text(json.dumps(record) + "\n")


async def main_async(args: argparse.Namespace, workdir: Path) -> list[Result]:
    plan = QUICK if args.quick else FULL
    if args.headroom_sessions:
        plan = replace(plan, headroom_sessions=args.headroom_sessions, deadlock_sessions=0)
    if args.headroom_clients:
        plan = replace(plan, deadlock_sessions=0)
    procs = Processes(workdir)
    write_corpus(workdir / "corpus.jsonl")
    bench = Bench(args, plan, procs)
    try:
        for shape in args.shapes:
            await bench.shape(shape)
        if args.headroom:
            await bench.headroom()
        if args.two_backends:
            await bench.two_backends()
            await bench.without_metrics()
    finally:
        procs.stop_all()
    return bench.results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="simulated seconds per wall second (default 60, quick 200)",
    )
    parser.add_argument("--shapes", default="short,medium,long")
    parser.add_argument("--only", default="", help="contender names, comma-separated")
    parser.add_argument("--no-two-backends", dest="two_backends", action="store_false")
    parser.add_argument("--no-headroom", dest="headroom", action="store_false")
    parser.add_argument("--headroom-sessions", type=int, default=None,
                        help="sessions in the headroom burst (default 32)")  # fmt: skip
    parser.add_argument("--headroom-clients", default="",
                        help="also run auto and no cap on the headroom backend with these "
                        "client counts, comma-separated (e.g. 64,96,128)")  # fmt: skip
    parser.add_argument("--headroom-only", action="store_true",
                        help="the headroom scenario alone (no shapes or 2 backends)")  # fmt: skip
    parser.add_argument("--auto-max", type=int, default=None,
                        help="DEEPRESEARCH_MAX_CONCURRENT_MAX for the servers (default: the "
                        "caller's environment, else the server's default, 64)")  # fmt: skip
    parser.add_argument("--run-timeout", type=float, default=180.0,
                        help="wall seconds one contender's burst may take")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--no-tool-latency", dest="tool_latency", action="store_false",
                        help="tools answer at once (as before tool latency)")  # fmt: skip
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in args.shapes if s not in workload.SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(workload.SHAPES)}")
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    try:
        args.headroom_clients = [int(c) for c in args.headroom_clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--headroom-clients takes whole numbers, comma-separated")
    if any(c < 1 for c in args.headroom_clients):
        parser.error("--headroom-clients must be positive")
    if args.headroom_only:
        args.shapes, args.two_backends, args.headroom = [], False, True
    if args.auto_max is not None:
        # Passed through to every deepresearch server (serving_procs.AUTO_BOUNDS).
        os.environ["DEEPRESEARCH_MAX_CONCURRENT_MAX"] = str(args.auto_max)
    if args.time_scale is None:
        args.time_scale = 200.0 if args.quick else 60.0
    serving_procs.CONTROL.seconds = max(0.02, 2.0 / args.time_scale)
    # Every process started from here (the contenders' tools) reads these.
    os.environ[workload.TIME_SCALE_ENV] = f"{args.time_scale:g}"
    os.environ[workload.TOOL_LATENCY_ENV] = "1" if args.tool_latency else "0"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(f"time scale {args.time_scale:g}x; logs in {workdir}", flush=True)
    try:
        results = asyncio.run(main_async(args, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 2
    wall = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "time_scale": args.time_scale,
        "quick": args.quick,
        "tool_latency": args.tool_latency,
        "wall_seconds": wall,
        "max_concurrent_max": os.environ.get("DEEPRESEARCH_MAX_CONCURRENT_MAX"),
    }
    (args.out / "serving.json").write_text(
        json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1)
    )
    report = serving_report.markdown(results, meta)
    (args.out / "serving.md").write_text(report)
    print("\n" + report)
    with suppress(ImportError):
        png = serving_report.plot(results, args.out / "serving.png")
        print(f"plot: {png}")
    print(f"wall time {wall:.0f} s")
    if not args.keep_logs:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
