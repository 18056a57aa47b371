"""A real cluster for tests: API nodes (`deepresearch serve`) and workers (`deepresearch
worker`) as processes, sharing one real `redis-server`, calling the LLM simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import redis

from tests.redis_server import RedisServer
from tests.support import (
    PORT_ATTEMPTS,
    SHARED_CORPUS,
    Process,
    ServerExited,
    free_port,
    wait_until_healthy,
)

# Small, so that a dead worker's sessions are taken over in seconds (heartbeat 5 s,
# sweep 1 s, abort wait 0.1 s), with room for a worker stalled ~3.5 s on a loaded machine.
RECOVERY_SECONDS = 8
SLOTS_PER_WORKER = 3
ADMIN_KEY = "admin-key-for-tests"

T = TypeVar("T")


class Cluster:
    """Nodes and workers on one Redis, one prefix; each process gets its own data dir."""

    def __init__(
        self, redis_server: RedisServer, workdir: Path, llm_url: str, corpus: Path, prefix: str
    ) -> None:
        self.redis = redis_server
        self.workdir = workdir
        self.prefix = prefix
        self.env = {
            **os.environ,
            "DEEPRESEARCH_REDIS_URL": redis_server.url,
            "DEEPRESEARCH_REDIS_PREFIX": prefix,
            "DEEPRESEARCH_RECOVERY_SECONDS": str(RECOVERY_SECONDS),
            "DEEPRESEARCH_MAX_CONCURRENT": str(SLOTS_PER_WORKER),
            "DEEPRESEARCH_LLM_URL": llm_url,
            "DEEPRESEARCH_CORPUS": str(corpus if corpus.exists() else SHARED_CORPUS),
            "DEEPRESEARCH_SEARCH": "local",
            "DEEPRESEARCH_LOG_LEVEL": "INFO",
            "DEEPRESEARCH_SHUTDOWN_GRACE": "2",
        }
        self.nodes: list[Process] = []
        self.node_dirs: list[Path] = []  # each node's data dir, as started
        self.workers: list[subprocess.Popen[str]] = []
        self._count = 0

    def _data_dir(self, kind: str) -> str:
        self._count += 1
        path = self.workdir / f"{kind}-{self._count}"
        path.mkdir(parents=True)
        return str(path)

    def _spawn(
        self, command: str, environment: dict[str, str]
    ) -> tuple[subprocess.Popen[str], Path]:
        """``deepresearch <command>`` logging (to stdout, as it does) into its own file
        beside its data dir."""
        log_path = Path(f"{environment['DEEPRESEARCH_DATA_DIR']}.log")
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deepresearch.cli", command],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return proc, log_path

    def start_node(self, **env: str) -> Process:
        """An API node on a free port (on another if its port is taken first)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            environment = {
                **self.env,
                "DEEPRESEARCH_DATA_DIR": self._data_dir("node"),
                "DEEPRESEARCH_PORT": str(port),
                **env,
            }
            proc, log_path = self._spawn("serve", environment)
            node = Process(proc, f"http://127.0.0.1:{port}")
            self.nodes.append(node)
            try:
                wait_until_healthy(node.url, proc, output=log_path.read_text)
            except ServerExited as exited:
                if exited.port_taken and attempt < PORT_ATTEMPTS:
                    self.nodes.remove(node)
                    continue
                raise
            self.node_dirs.append(Path(environment["DEEPRESEARCH_DATA_DIR"]))
            return node
        raise AssertionError("unreachable: the last attempt returns or raises")

    def start_worker(self, **env: str) -> subprocess.Popen[str]:
        environment = {**self.env, "DEEPRESEARCH_DATA_DIR": self._data_dir("worker"), **env}
        proc, _ = self._spawn("worker", environment)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Until the cluster's /health counts ``count`` live workers."""
        assert self.nodes, "start a node first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers:
                if worker.poll() is not None:
                    raise AssertionError(f"a worker exited with {worker.returncode}")
            health = httpx.get(f"{self.nodes[0].url}/health", timeout=5).json()
            if health.get("workers") == count:
                return
            time.sleep(0.05)  # polling a condition with a deadline
        raise AssertionError(f"{count} workers did not show up within {timeout} s")

    def kill_worker(self, pid: int) -> None:
        """``kill -9`` the worker with this pid."""
        for worker in self.workers:
            if worker.pid == pid:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                self.workers.remove(worker)
                return
        raise AssertionError(f"no worker with pid {pid}")

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for node in self.nodes:
            node.stop()

    # -- reading Redis directly (what the test checks, not what the code under test says)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def lease_holder(self, session_id: str) -> str | None:
        with self.client() as client:
            value = client.get(f"{self.prefix}:lease:{session_id}")
            return str(value) if value is not None else None

    def record(self, session_id: str) -> dict[str, str]:
        with self.client() as client:
            return dict(client.hgetall(f"{self.prefix}:session:{session_id}"))


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float, what: str, every: float = 0.05
) -> T:
    """``check()`` until it returns something, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found is not None:
            return found
        await asyncio.sleep(every)  # polling an observable condition with a deadline
    raise AssertionError(f"not within {timeout} s: {what}")


async def sim_requests(client: httpx.AsyncClient, sim_url: str) -> int:
    stats = (await client.get(f"{sim_url.removesuffix('/v1')}/stats")).json()
    return int(stats["requests"])
