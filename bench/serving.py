"""Serving benchmark: research sessions against the vLLM simulator, every contender side by side.

Usage: python bench/serving.py [--quick] [--time-scale 100] [--shapes short,medium,long]
       [--only NAME,...] [--out bench/results]        (``make bench-serving`` installs and runs)

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
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import serving_report  # noqa: E402
import workload  # noqa: E402

HOST = "127.0.0.1"
TERMINAL = frozenset({"completed", "error", "timeout", "no_answer", "cancelled"})
NO_CAP = 1024


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # seed | deepresearch | langgraph
    cap: int | str | None = None  # deepresearch: DEEPRESEARCH_MAX_CONCURRENT
    jobs: int | None = None  # langgraph: --n-jobs-per-worker (None: the dev default, 1)


@dataclass(frozen=True)
class Plan:
    sessions: dict[str, int]
    sweep: dict[str, list[int]]
    two_backend_sessions: int


FULL = Plan(
    sessions={"short": 24, "medium": 16, "long": 6},
    sweep={"short": [6, 8, 12, 16], "medium": [2, 4, 6], "long": [1, 2, 4]},
    two_backend_sessions=16,
)
QUICK = Plan(
    sessions={"short": 8, "medium": 6, "long": 3},
    sweep={"short": [8], "medium": [4], "long": [2]},
    two_backend_sessions=6,
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


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            # Each process leads its own group (start_new_session): stop it and its children.
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Processes:
    """Everything the run started, stopped on the way out whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, popen, "", log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(proc: Proc, path: str, seconds: float = 60.0) -> bool:
    """True once ``path`` answers 200; False if the process exited first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.alive():
            return False
        with suppress(httpx.TransportError):
            if httpx.get(f"{proc.url}{path}", timeout=2).status_code == 200:
                return True
        time.sleep(0.1)
    raise BenchError(f"{proc.name} was not ready within {seconds:g} s:\n{proc.tail()}")


def start_simulator(procs: Processes, name: str, scale: float, speed: float) -> Proc:
    port = free_port()
    argv = [sys.executable, str(BENCH / "vllm_sim.py"), "--port", str(port),
            "--time-scale", str(scale), "--speed", str(speed)]  # fmt: skip
    proc = procs.spawn(name, argv, dict(os.environ), procs.workdir)
    proc.url = f"http://{HOST}:{port}"
    if not wait_healthy(proc, "/health"):
        raise BenchError(f"the simulator exited:\n{proc.tail()}")
    return proc


def start_contender(
    procs: Processes, contender: Contender, llm_urls: list[str], tag: str
) -> Proc | None:
    """The contender's server, ready; None when it refuses to start (e.g. an unknown setting)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPRESEARCH_")}
    cwd = procs.workdir
    name = f"{tag}-{contender.name.replace(' ', '-')}"
    if contender.kind == "seed":
        env["SEED_LLM_URL"] = llm_urls[0]
        argv = [sys.executable, str(BENCH / "baselines" / "seed_server.py"), "--port", str(port)]
        health = "/health"
    elif contender.kind == "deepresearch":
        data = procs.workdir / f"data-{name}"
        corpus = procs.workdir / "corpus.jsonl"
        cap = str(contender.cap)
        env.update(
            DEEPRESEARCH_HOST=HOST,
            DEEPRESEARCH_PORT=str(port),
            DEEPRESEARCH_DATA_DIR=str(data),
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_SEARCH="local",
            DEEPRESEARCH_LLM_URL=",".join(llm_urls),
            DEEPRESEARCH_MAX_CONCURRENT=cap,
            DEEPRESEARCH_MAX_QUEUE=str(max(1000, NO_CAP)),
            DEEPRESEARCH_QUEUE_TIMEOUT="3600",
            DEEPRESEARCH_MAX_RUN_SECONDS="3600",
            DEEPRESEARCH_LOG_LEVEL="WARNING",
        )
        argv = [sys.executable, str(BENCH / "launch_deepresearch.py")]
        health = "/health"
    else:
        config = procs.workdir / "langgraph.json"
        peer = BENCH / "baselines" / "langgraph_peer"
        config.write_text(
            json.dumps({"dependencies": [str(peer)], "graphs": {"agent": f"{peer}/graph.py:graph"}})
        )
        env.update(
            BENCH_LLM_URL=llm_urls[0],
            LANGGRAPH_CLI_NO_ANALYTICS="1",
            LANGSMITH_TRACING="false",
            LANGCHAIN_TRACING_V2="false",
        )
        langgraph = Path(sys.executable).parent / "langgraph"
        argv = [str(langgraph), "dev", "--config", str(config), "--port", str(port),
                "--host", HOST, "--no-browser", "--no-reload"]  # fmt: skip
        if contender.jobs is not None:
            argv += ["--n-jobs-per-worker", str(contender.jobs)]
        cwd = procs.workdir / f"lg-{name}"
        cwd.mkdir(exist_ok=True)
        health = "/ok"
    proc = procs.spawn(name, argv, env, cwd)
    proc.url = f"http://{HOST}:{port}"
    if not wait_healthy(proc, health, 90.0):
        return None
    return proc


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    question: str
    posted: float = 0.0
    started: float | None = None  # admitted: the slot is held (or the run began)
    first_token: float | None = None
    ended: float | None = None
    outcome: str = "lost"
    detail: str = ""


def sse_events(lines: list[str]) -> tuple[str, str]:
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return kind, "\n".join(data)


async def run_session(client: httpx.AsyncClient, kind: str, base: str, session: Session) -> None:
    session.posted = time.monotonic()
    if kind == "langgraph":
        url = f"{base}/runs/stream"
        body: dict[str, Any] = {
            "assistant_id": "agent",
            "input": {"question": session.question},
            "stream_mode": ["custom"],
            "config": {"recursion_limit": 200},
        }
    else:
        url = f"{base}/chat/stream"
        body = {"question": session.question}
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                session.outcome = f"http {response.status_code}"
                return
            block: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    block.append(line)
                    continue
                if not block:
                    continue
                event, data = sse_events(block)
                block = []
                if on_event(kind, session, event, data):
                    return
    except httpx.HTTPError as exc:
        session.detail = f"{type(exc).__name__}: {exc}"
    finally:
        session.ended = time.monotonic()


def on_event(kind: str, session: Session, event: str, data: str) -> bool:
    """Note the session's milestones; True at its terminal event."""
    now = time.monotonic()
    if kind == "langgraph":
        if event == "metadata" and session.started is None:
            session.started = now
        elif event == "error":
            session.outcome, session.detail = "error", data[:200]
            return True
        elif event == "custom":
            payload = json.loads(data)
            if payload.get("type") == "thinking" and session.first_token is None:
                session.first_token = now
            if payload.get("type") == "final_answer":
                session.outcome = "completed"
        return False
    if not data:
        return False
    payload = json.loads(data)
    kind_of = payload.get("type")
    if kind_of in ("init", "round_start") and session.started is None:
        session.started = now
    elif kind_of == "thinking" and session.first_token is None:
        session.first_token = now
    elif kind_of in TERMINAL:
        session.outcome = kind_of
        if kind_of != "completed":
            session.detail = str(payload.get("content", ""))[:200]
        return True
    return False


async def run_burst(
    kind: str, base: str, questions: list[str], timeout: float, on_progress: Any = None
) -> list[Session]:
    sessions = [Session(q) for q in questions]
    limits = httpx.Limits(max_connections=len(questions) + 10, max_keepalive_connections=0)
    timeouts = httpx.Timeout(timeout, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeouts) as client:
        tasks = [asyncio.create_task(run_session(client, kind, base, s)) for s in sessions]
        watcher = asyncio.create_task(on_progress(sessions)) if on_progress else None
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    return sessions


# --------------------------------------------------------------------------- measures


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


@dataclass
class Result:
    shape: str
    contender: str
    available: bool = True
    sessions: int = 0
    completed: int = 0
    lost: int = 0
    makespan: float | None = None  # simulated seconds from the burst to the last end
    sessions_per_hour: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    session_p50: float | None = None
    session_p95: float | None = None
    queue_p50: float | None = None
    queue_p95: float | None = None
    kv_usage_mean: float | None = None
    kv_usage_max: float | None = None
    preemptions: int | None = None
    prefix_hit_rate: float | None = None
    backend_ttft_mean: float | None = None
    lag_max: float | None = None
    wall_seconds: float = 0.0
    backends: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def measure(
    shape: str, name: str, sessions: list[Session], began: float, scale: float,
    stats: list[dict[str, Any]], wall: float,
) -> Result:  # fmt: skip
    def sim(t: float | None, since: float) -> float | None:
        return None if t is None else (t - since) * scale

    done = [s for s in sessions if s.outcome == "completed"]
    ends = [s.ended for s in sessions if s.ended is not None]
    makespan = sim(max(ends), began) if ends else None
    result = Result(shape, name, sessions=len(sessions), completed=len(done))
    result.lost = len(sessions) - len(done)
    result.makespan = makespan
    if makespan:
        result.sessions_per_hour = len(done) / makespan * 3600
    ttft = [v for s in done if (v := sim(s.first_token, s.posted)) is not None]
    total = [v for s in done if (v := sim(s.ended, s.posted)) is not None]
    queue = [v for s in done if (v := sim(s.started, s.posted)) is not None]
    result.ttft_p50, result.ttft_p95 = percentile(ttft, 50), percentile(ttft, 95)
    result.session_p50, result.session_p95 = percentile(total, 50), percentile(total, 95)
    result.queue_p50, result.queue_p95 = percentile(queue, 50), percentile(queue, 95)
    busy = sum(s["busy_seconds"] for s in stats) or 1e-9
    result.kv_usage_mean = sum(s["kv_usage_mean"] * s["busy_seconds"] for s in stats) / busy
    result.kv_usage_max = max(s["kv_usage_max"] for s in stats)
    result.preemptions = sum(s["preemptions"] for s in stats)
    queries = sum(s["prefix_queries"] for s in stats)
    result.prefix_hit_rate = sum(s["prefix_hits"] for s in stats) / queries if queries else None
    counts = sum(s["ttft_count"] for s in stats)
    if counts:
        result.backend_ttft_mean = (
            sum((s["ttft_mean"] or 0) * s["ttft_count"] for s in stats) / counts
        )
    result.lag_max = max(s["lag_max"] for s in stats)
    result.wall_seconds = wall
    result.backends = [
        {"finished": s["finished"], "generation_tokens": s["generation_tokens"],
         "prompt_tokens": s["prompt_tokens"]}
        for s in stats
    ]  # fmt: skip
    failures = sorted(
        {f"{s.outcome} {s.detail}".strip() for s in sessions if s.outcome != "completed"}
    )
    result.note = "; ".join(failures)[:300]
    return result


async def sim_call(sims: list[Proc], path: str, post: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=10) as client:
        for sim in sims:
            if not sim.alive():
                out.append(dict(DEAD_STATS))
                continue
            response = await (client.post if post else client.get)(f"{sim.url}{path}")
            out.append(response.json())
    return out


DEAD_STATS: dict[str, Any] = {
    "busy_seconds": 0.0, "kv_usage_mean": 0.0, "kv_usage_max": 0.0, "preemptions": 0,
    "prefix_queries": 0, "prefix_hits": 0, "ttft_count": 0, "ttft_mean": None, "lag_max": 0.0,
    "finished": 0, "generation_tokens": 0, "prompt_tokens": 0,
}  # fmt: skip


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
        try:
            sessions = await run_burst(
                contender.kind, server.url, questions, self.args.run_timeout, on_progress
            )
        finally:
            server.stop()
        stats = await sim_call(sims, "/sim/stats")
        result = measure(
            scenario, label, sessions, began, self.args.time_scale, stats, time.monotonic() - wall0
        )
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
        fast = start_simulator(self.procs, "sim-fast", self.args.time_scale, 1.0)
        slow = start_simulator(self.procs, "sim-slow", self.args.time_scale, 0.5)
        try:
            contender = Contender(f"fixed {cap}", "deepresearch", cap=cap)
            await self.run_one(shape, contender, [fast, slow], count, "kill", kill_after=1 / 3)
        finally:
            fast.stop()
            slow.stop()


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
    procs = Processes(workdir)
    write_corpus(workdir / "corpus.jsonl")
    bench = Bench(args, plan, procs)
    try:
        for shape in args.shapes:
            await bench.shape(shape)
        if args.two_backends:
            await bench.two_backends()
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
    parser.add_argument("--run-timeout", type=float, default=180.0,
                        help="wall seconds one contender's burst may take")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in args.shapes if s not in workload.SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(workload.SHAPES)}")
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.time_scale is None:
        args.time_scale = 200.0 if args.quick else 60.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(f"time scale {args.time_scale:g}x; logs in {workdir}", flush=True)
    try:
        results = asyncio.run(main_async(args, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    wall = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "time_scale": args.time_scale,
        "quick": args.quick,
        "wall_seconds": wall,
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
