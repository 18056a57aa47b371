"""A real ``redis-server`` for tests: a free loopback port, a temporary directory.

No persistence unless asked (``persistent=True`` turns on the append-only file, so
``restart()`` keeps the data). Works as root and not: the server runs as whoever
runs the tests and writes only into its own directory.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

STARTUP_SECONDS = 10.0


def _serves(port: int, pid: int) -> bool:
    """Whether the process ``pid`` answers on ``port``, ready (its data loaded): PING,
    and INFO's process id (not some other test's server that got the port first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            if not conn.recv(64).startswith(b"+PONG"):
                return False
            conn.sendall(b"INFO server\r\n")
            reply = b""
            while (found := re.search(rb"process_id:(\d+)\r\n", reply)) is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return int(found.group(1)) == pid
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``url`` is where it listens."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make install`")
        self._binary = binary
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        return [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *persistence,
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
        ]

    def start(self) -> None:
        """Start it and wait until it answers PING (another process may take the
        port between choosing and binding it: then try another port)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self._process = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline:
                if _serves(self.port, self._process.pid):
                    return
                if self._process.poll() is not None:  # the port was taken: exited
                    break
                time.sleep(0.02)
            self.stop()
            self.port = free_port()
        log = self.directory / "redis.log"
        raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}")

    def flush(self) -> None:
        """Delete every key (between tests sharing one server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            if not conn.recv(64).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """``kill -9``: no chance to save anything."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (with ``persistent``, same data)."""
        self.stop()
        self._process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _serves(self.port, self._process.pid):
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise RuntimeError("redis-server did not come back on its port")
            time.sleep(0.02)


# -- fixtures: a test directory uses them with `from tests.redis_server import ...` in its
# conftest.py (one server per test run, emptied before each test that asks for its URL).


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, with every key of earlier tests gone."""
    redis_server.flush()
    return redis_server.url
