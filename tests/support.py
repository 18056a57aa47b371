"""Shared test helpers: real processes, real HTTP, a real SSE parser, a scripted model."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import (
    BackendState,
    CallContext,
    Message,
    NativeToolCall,
    Piece,
    estimate_tokens,
)
from deepresearch.llm.signals import BackendSignals

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR = ROOT / "bench" / "llm_simulator.py"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "corpus"
TERMINAL = {"completed", "error", "timeout", "no_answer", "cancelled"}


# Ports are chosen below the kernel's ephemeral range: it hands ports from that range
# to every outgoing connection (and to every bind to port 0) on the machine, so a port
# chosen there may be taken between choosing it and the server binding it, or while a
# server restarts on it. Chosen at random (not from `random`, which Hypothesis seeds
# alike in every process) so that two test processes rarely try the same one.
LOWEST_PORT = 20000
_pick = random.SystemRandom()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range."""
    highest = _ephemeral_floor() - 1
    if highest - LOWEST_PORT >= 1000:
        for _ in range(100):
            port = _pick.randint(LOWEST_PORT, highest)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: not even in TIME_WAIT
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # an odd port range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"process did not print {prefix!r} within {timeout} s")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited early with code {proc.wait()}")
            if line.startswith(prefix):
                return line.strip()


@contextmanager
def simulator(*args: str) -> Iterator[Process]:
    """The OpenAI-compatible LLM simulator as a real process."""
    proc = subprocess.Popen(
        [sys.executable, str(SIMULATOR), "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _wait_for_line(proc, "LISTENING ", 20)
        yield Process(proc, line.split()[1])
    finally:
        Process(proc, "").stop()
        if proc.stdout:
            proc.stdout.close()


class Output:
    """A child's output, read as it comes by a thread of its own (a pipe nobody reads
    fills up, and the child then blocks on its next log line), the last lines kept
    for a failure's message."""

    def __init__(self, stream: IO[str], keep: int = 200) -> None:
        self._lines: deque[str] = deque(maxlen=keep)
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._lines.append(line.rstrip("\n"))

    def text(self) -> str:
        """What has been read so far (all of it once the child has exited and
        ``finish`` returned)."""
        return "\n".join(self._lines)

    def finish(self, timeout: float = 10) -> None:
        """Until the child's end of the pipe is closed (it exited)."""
        self._reader.join(timeout)


class ServerExited(AssertionError):
    """The server exited before it answered its health check."""

    def __init__(self, code: int, output: str) -> None:
        super().__init__(f"server exited with code {code}; its last output:\n{output}")
        self.output = output

    @property
    def port_taken(self) -> bool:
        """Another process bound the chosen port first."""
        return "address already in use" in self.output


def wait_until_healthy(
    url: str,
    proc: subprocess.Popen[str],
    timeout: float = 60,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Until ``url/health`` answers 200; ``ServerExited`` if ``proc`` exits first
    (``output``: what it printed, for the message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(proc.returncode, output())
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a condition with a deadline, not hoping a race away
    raise AssertionError(
        f"server at {url} did not become healthy within {timeout} s; its output:\n{output()}"
    )


# A server whose port was taken before it bound it is started again on another.
PORT_ATTEMPTS = 5


@contextmanager
def server(data_dir: Path, wrap: Sequence[str] = (), **env: str) -> Iterator[Process]:
    """``deepresearch serve`` as a real process on a free port (``wrap``: a command
    that runs it, e.g. in namespaces of its own). Its log is read as it comes, and
    shown when it fails to start."""
    environment = {
        **os.environ,
        "DEEPRESEARCH_DATA_DIR": str(data_dir),
        "DEEPRESEARCH_CORPUS": env.pop("DEEPRESEARCH_CORPUS", str(SHARED_CORPUS)),
        "DEEPRESEARCH_LOG_LEVEL": "WARNING",
        "DEEPRESEARCH_SEARCH": "local",  # no test talks to the internet
        **env,
    }
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "deepresearch.cli", "serve"],
            env={**environment, "DEEPRESEARCH_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        output = Output(proc.stdout)
        process = Process(proc, f"http://127.0.0.1:{port}")
        try:
            wait_until_healthy(process.url, proc, output=output.text)
        except ServerExited:
            output.finish()  # its last lines say why
            exited = ServerExited(proc.returncode, output.text())
            if exited.port_taken and attempt < PORT_ATTEMPTS:
                continue
            raise exited from None
        except BaseException:
            process.stop()
            output.finish()
            raise
        break
    try:
        yield process
    finally:
        process.stop()
        output.finish()


@dataclass
class SSEEvent:
    id: int | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


@dataclass
class SSEStream:
    status: int
    events: list[SSEEvent] = field(default_factory=list)
    comments: int = 0

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent | None]:
    """Parse an SSE body per the HTML spec: ``None`` for a comment line."""
    event_id: int | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SSEEvent(event_id, json.loads("\n".join(data)))
            event_id, data = None, []
        elif line.startswith(":"):
            yield None
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = int(value)
            elif name == "data":
                data.append(value)


async def collect(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> SSEStream:
    """Read a stream to its terminal event (or ``limit`` events), then disconnect."""
    async with client.stream(method, url, **kwargs) as response:
        result = SSEStream(response.status_code)
        if response.status_code != 200:
            await response.aread()
            return result
        async for event in iter_sse(response):
            if event is None:
                result.comments += 1
                continue
            result.events.append(event)
            if event.type in TERMINAL or (limit is not None and len(result.events) >= limit):
                break
    return result


class ScriptedModel:
    """A ``ChatModel`` that replies from a script, recording what it was sent.

    Each script item is a reply: a str (streamed in small pieces), a list of
    pieces (str and native tool calls, sent as given; an exception in it is
    raised there, part-way), or an exception to raise instead.
    """

    def __init__(
        self,
        replies: Sequence[str | Exception | list[str | NativeToolCall | Exception]],
        piece: int = 7,
    ) -> None:
        self._replies = list(replies)
        self._piece = piece
        self.calls: list[list[Message]] = []
        self.settings: list[GenerationSettings] = []
        self.tools: list[Sequence[dict[str, Any]] | None] = []
        self.contexts: list[CallContext] = []
        self.counted: list[CallContext] = []
        self.ended: list[str] = []  # sessions it was told had ended
        self.up = True  # what a health probe finds

    def states(self) -> list[BackendState]:
        return [BackendState("scripted", "scripted", True, None)]

    async def probe(self) -> bool:
        return self.up

    async def signals(self) -> BackendSignals | None:
        return None

    def end_session(self, session_id: str) -> None:
        self.ended.append(session_id)

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        self.counted.append(call)
        return estimate_tokens(messages)

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[Piece, None]:
        self.calls.append([m.copy() for m in messages])  # snapshots: the agent may edit later
        self.settings.append(settings)
        self.tools.append(tools)
        self.contexts.append(call)
        if not self._replies:
            raise BackendError("the script has no more replies")
        reply = self._replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            for item in reply:
                if isinstance(item, Exception):
                    raise item
                yield item
            return
        for start in range(0, len(reply), self._piece):
            yield reply[start : start + self._piece]


@asynccontextmanager
async def running_app(settings: Any, **app_options: Any) -> AsyncIterator[str]:
    """The real app under a real uvicorn on a free port, in this process."""
    from deepresearch.server import create_app

    async with serving(create_app(settings, **app_options), settings) as url:
        yield url


@asynccontextmanager
async def serving(app: Any, settings: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn with the connection bounds ``deepresearch serve`` uses."""
    import asyncio

    import uvicorn

    from deepresearch.server.limits import server_options

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **server_options(settings.header_timeout),
    )
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    try:
        while not instance.started:
            assert not task.done(), "server failed to start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        await task


def write_corpus(folder: Path) -> Path:
    """A small corpus in the shared data's JSONL shape."""
    records = [
        {
            "id": f"pubmed:{1000 + n}",
            "source": "PubMed",
            "url": f"https://pubmed.ncbi.nlm.nih.gov/{1000 + n}/",
            "title": title,
            "year": "2020",
            "text": text,
        }
        for n, (title, text) in enumerate(
            [
                (
                    "Metformin in type 2 diabetes",
                    "Metformin is the first-line therapy for type 2 "
                    "diabetes. Lifestyle changes improve glycaemic control.",
                ),
                (
                    "Hypertension treatment",
                    "Thiazide diuretics, ACE inhibitors and calcium channel "
                    "blockers are first-line treatments for hypertension.",
                ),
                ("Asthma inhalers", "Inhaled corticosteroids reduce asthma exacerbations."),
            ]
        )
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
