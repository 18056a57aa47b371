"""The serving benchmark's processes: simulators and contenders' servers, started and stopped.

Every process leads its own process group (``start_new_session``) and is stopped through it,
so a server's children go with it; ``Processes.stop_all`` stops whatever is still running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
NO_CAP = 1024


@dataclass
class ControlInterval:
    """``DEEPRESEARCH_LLM_CONTROL_SECONDS`` for the servers under test: the production 2 s
    of simulated time, so the controller sees as many readings per session as it would."""

    seconds: float = 2.0


CONTROL = ControlInterval()  # serving.py sets it from --time-scale
AUTO_BOUNDS = ("DEEPRESEARCH_MAX_CONCURRENT_MIN", "DEEPRESEARCH_MAX_CONCURRENT_MAX")


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # seed | deepresearch | langgraph
    cap: int | str | None = None  # deepresearch: DEEPRESEARCH_MAX_CONCURRENT
    jobs: int | None = None  # langgraph: --n-jobs-per-worker (None: the dev default, 1)


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


def start_simulator(procs: Processes, name: str, scale: float, speed: float, *extra: str) -> Proc:
    port = free_port()
    argv = [sys.executable, str(BENCH / "vllm_sim.py"), "--port", str(port),
            "--time-scale", str(scale), "--speed", str(speed), *extra]  # fmt: skip
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
    # The caller's DEEPRESEARCH_* settings stay out, but for auto's bounds, which pass through.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DEEPRESEARCH_") or k in AUTO_BOUNDS
    }
    cwd = procs.workdir
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{tag}-{contender.name}")  # a file name
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
            DEEPRESEARCH_LLM_CONTROL_SECONDS=f"{CONTROL.seconds:g}",
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
