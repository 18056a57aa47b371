"""Hold many concurrent open streams on one server process and measure what they cost.

Usage: python bench/streams.py [--streams 1000] [--slots 4] [--queue 1000] [--timeout 900]
       [--ramp-seconds 0] [--baseline-sessions 100] [--json PATH] [--profile DIR]

The script starts the LLM simulator (``bench/llm_simulator.py --token-delay-ms 0``) and one
``deepresearch serve`` process itself, on free loopback ports, with a temporary data directory
and a three-record corpus written to it; it stops both before it exits. Three phases:

A. hold: N streams opened at once (or evenly over --ramp-seconds) whose questions carry
   ``[sim:hang]``, so the ``slots`` running sessions stall inside the model call and the rest
   wait in the queue; nothing finishes.
   Measures time to the first event (the burst, then single probes while N stay open) and the
   server's RSS per waiting stream. Every stream is then cancelled with ``DELETE`` and must end
   with exactly one ``cancelled``.
B. drain: on a fresh server, N streams against the instant simulator, all run to completion.
   Measures server CPU per streamed event (``queued`` re-sends included), throughput, and time
   to the first event again. Every stream must end with exactly one ``completed``.
C. no queue (on B's server, before B): batches of ``slots`` streams, so nothing ever waits;
   server CPU per event of the research itself, the figure closest to the LangGraph yardstick
   (a two-call ReAct graph, one run at a time).

The load client is raw asyncio (uvloop when installed) in this process: httpx's per-line
parsing would cost about as much CPU as the server on the shared two cores. Its CPU time is
reported next to the server's so the reader can judge how much of the machine it took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR = ROOT / "bench" / "llm_simulator.py"
HOST = "127.0.0.1"
TERMINAL = frozenset({"completed", "error", "timeout", "no_answer", "cancelled"})
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_P99_MS = 100.0
TARGET_KB_PER_WAITING = 50.0
# LangGraph's in-memory dev server, measured on these machines (docs/field-notes.md).
LANGGRAPH_CPU_MS = (0.5, 0.76)
LANGGRAPH_KB_PER_WAITING = 83.0

PROBES = 20
CORPUS = [
    (
        "Metformin in type 2 diabetes",
        "Metformin is the first-line therapy for type 2 diabetes. "
        "Lifestyle changes improve glycaemic control.",
    ),
    (
        "Hypertension treatment",
        "Thiazide diuretics, ACE inhibitors and calcium channel blockers are first-line "
        "treatments for hypertension.",
    ),
    ("Asthma inhalers", "Inhaled corticosteroids reduce asthma exacerbations."),
]


class BenchError(Exception):
    """The benchmark could not run or a correctness check failed."""


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def simulator(workdir: Path) -> Iterator[Proc]:
    log = workdir / "simulator.log"
    with log.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, str(SIMULATOR), "--port", "0", "--token-delay-ms", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    proc = Proc(popen, "", log)
    try:
        assert popen.stdout is not None
        deadline = time.monotonic() + 30
        while not proc.url:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([popen.stdout], [], [], max(remaining, 0))
            if not ready:
                raise BenchError("the simulator did not print LISTENING within 30 s")
            line = popen.stdout.readline().decode()
            if not line:
                raise BenchError(f"the simulator exited early:\n{proc.log_tail()}")
            if line.startswith("LISTENING "):
                proc.url = line.split()[1]
        yield proc
    finally:
        proc.stop()
        if popen.stdout is not None:
            popen.stdout.close()


@contextmanager
def server(workdir: Path, name: str, llm_url: str, args: argparse.Namespace) -> Iterator[Proc]:
    port = free_port()
    env = {
        **os.environ,
        "DEEPRESEARCH_DATA_DIR": str(workdir / f"data-{name}"),
        "DEEPRESEARCH_PORT": str(port),
        "DEEPRESEARCH_CORPUS": str(workdir / "corpus" / "corpus.jsonl"),
        "DEEPRESEARCH_SEARCH": "local",
        "DEEPRESEARCH_LLM_URL": llm_url,
        "DEEPRESEARCH_MAX_CONCURRENT": str(args.slots),
        "DEEPRESEARCH_MAX_QUEUE": str(args.queue),
        # The drain phase must not lose its tail of the queue to the default 300 s wait limit.
        "DEEPRESEARCH_QUEUE_TIMEOUT": str(args.timeout),
        "DEEPRESEARCH_LOG_LEVEL": "WARNING",
    }
    log = workdir / f"server-{name}.log"
    # The log goes to a file: a full stderr pipe would stall the server mid-benchmark.
    with log.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "deepresearch.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    proc = Proc(popen, f"http://{HOST}:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if popen.poll() is not None:
                raise BenchError(f"the server exited with {popen.returncode}:\n{proc.log_tail()}")
            try:
                if httpx.get(f"{proc.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the server was not healthy within 60 s:\n{proc.log_tail()}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.stop()


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "id": f"pubmed:{1000 + n}",
            "source": "PubMed",
            "url": f"https://pubmed.ncbi.nlm.nih.gov/{1000 + n}/",
            "title": title,
            "year": "2020",
            "text": text,
        }
        for n, (title, text) in enumerate(CORPUS)
    ]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def rss_bytes(pid: int) -> int:
    return _proc_status(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    return _proc_status(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (the SQLite threads count too)."""
    # The command name may contain spaces or parentheses; the fields after the last ')' do not.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@contextmanager
def profiled(pid: int, folder: Path | None, name: str) -> Iterator[None]:
    """Sample the server with py-spy during one phase (collapsed stacks), when asked."""
    if folder is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise BenchError(f"--profile needs py-spy next to {sys.executable}: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.txt"
    # Idle samples are left out: the question is what burns the server's CPU.
    command = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--threads"]
    recorder = subprocess.Popen(
        [*command, "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # py-spy needs a moment to attach before the phase's first request
    try:
        yield
    finally:
        # SIGINT makes py-spy write what it sampled; SIGTERM would lose it.
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


# --------------------------------------------------------------------------- load client


@dataclass
class Stream:
    """What one client saw of one ``POST /chat/stream``."""

    question: str
    status: int = 0
    started: float = 0.0
    headers: float | None = None  # response headers in: the server has created the session
    first_event: float | None = None
    ended: float | None = None
    events: int = 0
    queued_events: int = 0
    terminals: int = 0
    last_type: str = ""
    session_id: str = ""
    position: int = 0  # latest queue position; 0 once running or never queued
    problems: list[str] = field(default_factory=list)

    @property
    def ttfe_ms(self) -> float | None:
        return None if self.first_event is None else (self.first_event - self.started) * 1000

    @property
    def headers_ms(self) -> float | None:
        return None if self.headers is None else (self.headers - self.started) * 1000


class StreamReader:
    """Incremental SSE parser over a chunked HTTP/1.1 body; one instance per stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.last_seq = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                return
            block, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            self._block(block)

    def _block(self, block: bytes) -> None:
        seq: int | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"id:"):
                seq = int(line[3:])
        if not data:
            return  # a heartbeat comment
        s = self.stream
        if s.first_event is None:
            s.first_event = time.perf_counter()
        event: dict[str, Any] = json.loads(b"\n".join(data))
        s.events += 1
        kind = str(event.get("type"))
        if s.terminals:
            s.problems.append(f"{kind} after the terminal event")
        if seq != self.last_seq + 1:
            s.problems.append(f"event id {seq} after {self.last_seq}")
        self.last_seq = seq or self.last_seq
        if not s.session_id:
            s.session_id = str(event.get("session_id"))
            if kind != "session_start":
                s.problems.append(f"first event is {kind}")
        elif event.get("session_id") != s.session_id:
            s.problems.append("an event of another session")
        if kind == "queued":
            s.queued_events += 1
            s.position = int(event["position"])
        elif kind == "init":
            s.position = 0
        if kind in TERMINAL:
            s.terminals += 1
        s.last_type = kind


async def open_stream(port: int, stream: Stream, on_disconnect: str) -> None:
    """POST /chat/stream and read the body until the server closes it."""
    body = json.dumps({"question": stream.question, "on_disconnect": on_disconnect}).encode()
    request = (
        f"POST /chat/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stream.started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        stream.headers = time.perf_counter()
        stream.status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        if stream.status != 200:
            stream.problems.append(f"HTTP {stream.status}")
            return
        parser = StreamReader(stream)
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    break
                parser.feed((await reader.readexactly(size + 2))[:-2])
        else:
            while chunk := await reader.read(65536):
                parser.feed(chunk)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        stream.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        stream.ended = time.perf_counter()
        if writer is not None:
            writer.close()


def verify(streams: list[Stream], terminal: str) -> list[str]:
    """Every stream: HTTP 200, exactly one terminal event, the expected one, last."""
    failures: list[str] = []
    for n, s in enumerate(streams):
        if s.problems:
            failures.append(f"stream {n}: {'; '.join(s.problems[:3])}")
        elif s.terminals != 1 or s.last_type != terminal:
            failures.append(f"stream {n}: {s.terminals} terminal events, last {s.last_type!r}")
    return failures


# --------------------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the value below which ``q`` percent of the samples lie."""
    ranked = sorted(values)
    index = max(0, min(len(ranked) - 1, -(-len(ranked) * q // 100) - 1))
    return ranked[int(index)]


@dataclass
class Latency:
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, streams: list[Stream], headers: bool = False) -> Latency:
        values = [ms for s in streams if (ms := s.headers_ms if headers else s.ttfe_ms) is not None]
        return cls.of_values(values)

    @classmethod
    def of_values(cls, values: list[float]) -> Latency:
        if not values:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(
            len(values),
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            max(values),
        )


@dataclass
class Usage:
    """CPU seconds of the server, the simulator and this client over one phase."""

    wall: float = 0.0
    server: float = 0.0
    simulator: float = 0.0
    client: float = 0.0


@contextmanager
def usage(server_pid: int, sim_pid: int) -> Iterator[Usage]:
    result = Usage()
    start = (time.perf_counter(), cpu_seconds(server_pid), cpu_seconds(sim_pid), own_cpu_seconds())
    yield result
    result.wall = time.perf_counter() - start[0]
    result.server = cpu_seconds(server_pid) - start[1]
    result.simulator = cpu_seconds(sim_pid) - start[2]
    result.client = own_cpu_seconds() - start[3]


@dataclass
class Report:
    streams: int
    slots: int
    queue: int
    ramp_seconds: float
    date: str
    machine: str
    rss_start: int = 0
    rss_idle: int = 0
    rss_loaded: int = 0
    burst_a: Latency | None = None
    headers_a: Latency | None = None
    burst_cpu: float = 0.0  # server CPU seconds from the first request to the last first event
    probes: Latency | None = None
    health: Latency | None = None  # GET /health with every slot busy and N waiting
    burst_b: Latency | None = None
    drain: Usage | None = None
    drain_events: int = 0
    drain_queued_events: int = 0
    drain_peak_rss: int = 0
    nq: Usage | None = None
    nq_events: int = 0
    nq_sessions: int = 0
    max_in_flight: int = 0
    checks: list[str] = field(default_factory=list)

    @property
    def arrival(self) -> str:
        if self.ramp_seconds > 0:
            return f"{self.streams} opened over {self.ramp_seconds:g} s"
        return f"burst of {self.streams}"

    @property
    def kb_per_waiting(self) -> float:
        return (self.rss_loaded - self.rss_idle) / self.streams / 1024


# --------------------------------------------------------------------------- phases


async def wait_for(
    what: str, condition: Any, timeout: float, client: httpx.AsyncClient | None = None
) -> Any:
    """Poll ``condition`` (sync, or async taking the control client) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition(client) if client is not None else condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get("/health")).json()
    return found


async def run_batch(port: int, questions: list[str], on_disconnect: str) -> list[Stream]:
    streams = [Stream(q) for q in questions]
    await asyncio.gather(*(open_stream(port, s, on_disconnect) for s in streams))
    return streams


async def warm_up(port: int, slots: int, tag: str) -> None:
    """Run one slot-full of sessions first so lazy imports and pools are not billed to a phase."""
    questions = [f"tok-warm{tag}{n}: warm-up question {n} about asthma?" for n in range(slots)]
    failures = verify(await run_batch(port, questions, "cancel"), "completed")
    if failures:
        raise BenchError(f"warm-up failed: {failures[:3]}")


async def cancel_all(client: httpx.AsyncClient, streams: list[Stream]) -> None:
    # The back of the queue first: removing the last waiter moves nobody, so the cancellation
    # itself does not set off a storm of `queued` re-sends; the running ones go last.
    order = sorted(streams, key=lambda s: s.position, reverse=True)
    for s in order:
        if s.session_id and s.terminals == 0:
            response = await client.delete(f"/sessions/{s.session_id}")
            if response.status_code != 200:
                raise BenchError(f"DELETE {s.session_id}: HTTP {response.status_code}")


async def open_spread(port: int, streams: list[Stream], seconds: float) -> list[asyncio.Task[None]]:
    """Start every stream, all at once or at an even rate over ``seconds``."""
    if seconds <= 0:
        return [asyncio.create_task(open_stream(port, s, "cancel")) for s in streams]
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i, s in enumerate(streams):
        # Sleeping to an absolute schedule keeps the rate even when the loop falls behind.
        await asyncio.sleep(max(0.0, start + i * seconds / len(streams) - time.monotonic()))
        tasks.append(asyncio.create_task(open_stream(port, s, "cancel")))
    return tasks


async def phase_hold(
    report: Report, srv: Proc, port: int, args: argparse.Namespace, deadline: float
) -> None:
    n, slots = args.streams, args.slots
    arrival = f"over {args.ramp_seconds:g} s" if args.ramp_seconds > 0 else "at once"
    print(f"[A] opening {n} streams {arrival} on a hanging model ...", flush=True)
    questions = [f"tok-hold{i}: held question {i} about hypertension? [sim:hang]" for i in range(n)]
    streams = [Stream(q) for q in questions]
    cpu_before = cpu_seconds(srv.pid)
    tasks = await open_spread(port, streams, args.ramp_seconds)
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        await wait_for(
            "every stream's first event",
            lambda: all(s.first_event is not None or s.ended for s in streams),
            deadline - time.monotonic(),
        )
        failed = [s for s in streams if s.first_event is None]
        if failed:
            raise BenchError(f"{len(failed)} streams got no event: {failed[0].problems[:2]}")
        report.burst_cpu = cpu_seconds(srv.pid) - cpu_before
        report.burst_a = Latency.of(streams)
        report.headers_a = Latency.of(streams, headers=True)

        async def settled(c: httpx.AsyncClient) -> bool:
            state = await health(c)
            queued = sum(1 for s in streams if s.position > 0)
            server_side = (state["queued_sessions"], state["active_sessions"])
            return server_side == (n - slots, slots) and queued == n - slots

        # RSS is read only when the server says every waiter is queued and every waiter's
        # client has its position: all N streams exist and none has finished.
        await wait_for("queued_sessions == N - slots", settled, 120, client)
        await asyncio.sleep(1.0)
        report.rss_loaded = rss_bytes(srv.pid)
        print(
            f"[A] {n} open, RSS {report.rss_loaded / 2**20:.1f} MiB; "
            f"first event p99 {report.burst_a.p99:.0f} ms",
            flush=True,
        )

        # One stream at a time while N stay open: the latency a newcomer sees under load, apart
        # from the burst's self-inflicted queueing. Each probe joins the back of the queue and
        # is cancelled from there, so nobody else's position changes.
        probes: list[Stream] = []
        # Probes go one at a time, so one free place in the queue is enough for all of them.
        room = args.queue - (n - slots)
        for i in range(PROBES if room > 0 else 0):
            probe = Stream(f"tok-probe{i}: probe question {i} about asthma? [sim:hang]")
            probes.append(probe)
            task = asyncio.create_task(open_stream(port, probe, "cancel"))
            await wait_for("a probe's queue position", lambda p=probe: p.position or p.ended, 30)
            if not probe.session_id:
                break  # refused (e.g. the queue filled up): verify() reports it
            await client.delete(f"/sessions/{probe.session_id}")
            await asyncio.wait_for(task, 30)
        if probes:
            report.probes = Latency.of(probes)
            report.checks += [f"probe {f}" for f in verify(probes, "cancelled")]

        # /health must answer at once even when every slot is busy and N wait.
        health_ms: list[float] = []
        for _ in range(PROBES):
            began = time.perf_counter()
            await health(client)
            health_ms.append((time.perf_counter() - began) * 1000)
        report.health = Latency.of_values(health_ms)

        print(f"[A] cancelling {n} sessions ...", flush=True)
        await cancel_all(client, streams)
        await asyncio.wait_for(asyncio.gather(*tasks), max(deadline - time.monotonic(), 1))
        state = await health(client)
        if (state["active_sessions"], state["queued_sessions"]) != (0, 0):
            report.checks.append(f"after phase A /health still shows {state}")
    report.checks += [f"hold {f}" for f in verify(streams, "cancelled")]


async def phase_drain(
    report: Report, srv: Proc, sim: Proc, port: int, args: argparse.Namespace
) -> None:
    n = args.streams
    questions = [f"tok-run{i}: question {i} about diabetes care?" for i in range(n)]
    print(f"[B] {n} streams at once, run to completion on the instant model ...", flush=True)
    with usage(srv.pid, sim.pid) as used:
        streams = await run_batch(port, questions, "cancel")
    report.drain = used
    report.burst_b = Latency.of(streams)
    report.drain_events = sum(s.events for s in streams)
    report.drain_queued_events = sum(s.queued_events for s in streams)
    report.drain_peak_rss = peak_rss_bytes(srv.pid)
    report.checks += [f"drain {f}" for f in verify(streams, "completed")]
    print(
        f"[B] {report.drain_events} events in {used.wall:.1f} s, server CPU {used.server:.1f} s",
        flush=True,
    )


async def phase_no_queue(
    report: Report, srv: Proc, sim: Proc, port: int, args: argparse.Namespace
) -> None:
    batches = max(1, args.baseline_sessions // args.slots)
    print(f"[C] {batches} batches of {args.slots} streams, nothing queued ...", flush=True)
    streams: list[Stream] = []
    with usage(srv.pid, sim.pid) as used:
        for b in range(batches):
            questions = [f"tok-nq{b}x{i}: question {i} about asthma?" for i in range(args.slots)]
            streams += await run_batch(port, questions, "cancel")
    report.nq = used
    report.nq_sessions = len(streams)
    report.nq_events = sum(s.events for s in streams)
    report.checks += [f"no-queue {f}" for f in verify(streams, "completed")]
    if any(s.queued_events for s in streams):
        report.checks.append("phase C saw queued events: the slots were not free")


async def sim_stats(sim: Proc, reset: bool = False) -> dict[str, int]:
    base = sim.url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=10) as client:
        if reset:
            response = await client.post(f"{base}/stats/reset")
        else:
            response = await client.get(f"{base}/stats")
        found: dict[str, int] = response.json()
        return found


async def run(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    deadline = time.monotonic() + args.timeout
    write_corpus(workdir / "corpus")
    with simulator(workdir) as sim:
        with server(workdir, "hold", sim.url, args) as srv:
            port = int(srv.url.rsplit(":", 1)[1])
            report.rss_start = rss_bytes(srv.pid)
            await warm_up(port, args.slots, "a")
            await asyncio.sleep(0.5)
            report.rss_idle = rss_bytes(srv.pid)
            await sim_stats(sim, reset=True)
            with profiled(srv.pid, args.profile, "a-hold"):
                await phase_hold(report, srv, port, args, deadline)
            report.max_in_flight = (await sim_stats(sim))["max_in_flight"]
        # A fresh process, so phase A's leftovers (memory, a larger database) do not bill B.
        with server(workdir, "drain", sim.url, args) as srv:
            port = int(srv.url.rsplit(":", 1)[1])
            await warm_up(port, args.slots, "b")
            await sim_stats(sim, reset=True)
            # C before B: B leaves ~N²/2 stored events behind, a bigger database for C's writes.
            with profiled(srv.pid, args.profile, "c-no-queue"):
                await phase_no_queue(report, srv, sim, port, args)
            with profiled(srv.pid, args.profile, "b-drain"):
                await phase_drain(report, srv, sim, port, args)
            stats = await sim_stats(sim)
            report.max_in_flight = max(report.max_in_flight, stats["max_in_flight"])
    if report.max_in_flight > args.slots:
        report.checks.append(f"simulator max_in_flight {report.max_in_flight} > {args.slots}")


# --------------------------------------------------------------------------- output


def render(report: Report) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def latency(label: str, lat: Latency | None, target: bool = True) -> None:
        if lat is None or lat.count == 0:
            return
        goal = f"p99 < {TARGET_P99_MS:.0f} ms: {verdict(lat.p99 < TARGET_P99_MS)}"
        rows.append(
            (
                f"{label} (n={lat.count})",
                f"p50 {lat.p50:.1f} / p95 {lat.p95:.1f} / p99 {lat.p99:.1f} / max {lat.max:.1f} ms",
                goal if target else "",
                "",
            )
        )

    def cpu(label: str, used: Usage | None, events: int, extra: str) -> None:
        if used is None or events == 0:
            return
        per_event = used.server / events * 1000
        lo, hi = LANGGRAPH_CPU_MS
        rows.extend(
            [
                (
                    f"{label}: server CPU per event",
                    f"{per_event:.3f} ms ({events} events{extra})",
                    "",
                    f"LangGraph {lo}-{hi} ms ({per_event / hi:.2f}-{per_event / lo:.2f}x)",
                ),
                (
                    f"{label}: wall, throughput",
                    f"{used.wall:.1f} s, {events / used.wall:.0f} events/s",
                    "",
                    "",
                ),
                (
                    f"{label}: CPU s server / simulator / client",
                    f"{used.server:.1f} / {used.simulator:.1f} / {used.client:.1f} "
                    f"(server {used.server / used.wall * 100:.0f}% of one core)",
                    "",
                    "",
                ),
            ]
        )

    rows: list[tuple[str, str, str, str]] = []
    n = report.streams
    latency(f"A: first event, {report.arrival}", report.burst_a)
    # Not a target: it splits the first-event time into "admitted" and "delivered".
    latency(f"A: response headers, {report.arrival}", report.headers_a, target=False)
    if report.burst_cpu:
        rows.append(
            (
                "A: server CPU to admit one stream",
                f"{report.burst_cpu / n * 1000:.2f} ms ({report.burst_cpu:.2f} s for {n})",
                "",
                "",
            )
        )
    latency(f"A: first event, single probe, {n} open", report.probes)
    latency(f"A: GET /health, all slots busy, {n} open", report.health, target=False)
    kb = report.kb_per_waiting
    rows.append(
        (
            "A: server RSS start / idle / all open",
            f"{report.rss_start / 2**20:.1f} / {report.rss_idle / 2**20:.1f} / "
            f"{report.rss_loaded / 2**20:.1f} MiB",
            "",
            "",
        )
    )
    rows.append(
        (
            f"A: memory per waiting stream ({n} open)",
            f"{kb:.1f} KB",
            f"< {TARGET_KB_PER_WAITING:.0f} KB: {verdict(kb < TARGET_KB_PER_WAITING)}",
            f"LangGraph {LANGGRAPH_KB_PER_WAITING:.0f} KB ({kb / LANGGRAPH_KB_PER_WAITING:.2f}x)",
        )
    )
    latency(f"B: first event, burst of {n}", report.burst_b)
    queued = f", {report.drain_queued_events} of them `queued`"
    cpu(f"B: {n} streams to completion", report.drain, report.drain_events, queued)
    if report.drain_peak_rss:
        peak = f"{report.drain_peak_rss / 2**20:.1f} MiB"
        rows.append(("B: server peak RSS (VmHWM)", peak, "", ""))
    label = f"C: {report.nq_sessions} streams, {report.slots} at a time"
    cpu(label, report.nq, report.nq_events, ", none `queued`")
    rows.append(
        (
            "simulator max_in_flight",
            str(report.max_in_flight),
            f"<= {report.slots}: {verdict(report.max_in_flight <= report.slots)}",
            "",
        )
    )
    rows.append(
        (
            "every stream: one terminal event, the right one",
            "yes" if not report.checks else f"NO ({len(report.checks)} problems)",
            "",
            "",
        )
    )
    header = ("measure", "value", "target", "yardstick")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        f"bench/streams.py  {report.date}  {report.machine}",
        f"streams={n} slots={report.slots} queue={report.queue} "
        f"ramp={report.ramp_seconds:g}s simulator --token-delay-ms 0",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"  problem: {c}" for c in report.checks[:20]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (N)")
    parser.add_argument("--slots", type=int, default=4, help="DEEPRESEARCH_MAX_CONCURRENT")
    parser.add_argument("--queue", type=int, default=1000, help="DEEPRESEARCH_MAX_QUEUE")
    parser.add_argument(
        "--baseline-sessions", type=int, default=100, help="sessions in phase C (no queue)"
    )
    parser.add_argument(
        "--ramp-seconds",
        type=float,
        default=0.0,
        help="phase A opens its streams evenly over this many seconds (0: all at once)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="overall limit, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the server with py-spy per phase into DIR (skews the figures)",
    )
    args = parser.parse_args(argv)
    if args.streams < 1 or args.slots < 1:
        parser.error("--streams and --slots must be at least 1")
    if args.streams - args.slots > args.queue:
        parser.error("--queue must hold every stream that does not get a slot")
    return args


def raise_fd_limit(needed: int) -> None:
    # Each stream is a socket here and one in the server (which inherits this limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < needed:
            raise BenchError(f"need {needed} file descriptors, the hard limit is {hard}")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    # The server runs on uvloop (uvicorn picks it up); the client should be as cheap.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        raise_fd_limit(args.streams * 2 + 256)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    report = Report(
        streams=args.streams,
        slots=args.slots,
        queue=args.queue,
        ramp_seconds=args.ramp_seconds,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
    )
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        try:
            run_loop(asyncio.wait_for(run(args, Path(tmp), report), args.timeout))
        except (BenchError, TimeoutError) as exc:
            reason = str(exc) or f"the overall timeout of {args.timeout:g} s"
            print(f"benchmark failed: {reason}", file=sys.stderr)
            return 2
    print()
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, default=vars, indent=2))
    return 1 if report.checks else 0


if __name__ == "__main__":
    sys.exit(main())
