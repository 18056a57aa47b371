"""An OpenAI-compatible stand-in for a vLLM server serving Tongyi DeepResearch.

Integration tests and benchmarks run this script as a separate process so the agent talks to a
real HTTP server without needing a GPU. Replies are deterministic and scripted by directives
embedded in the first user message, e.g. ``What causes tok-abc? [sim:rounds=2] [sim:slow=20]``:

    [sim:error]        answer HTTP 500 at once
    [sim:error-once]   answer HTTP 500 to the first attempt of the conversation, then succeed
    [sim:hang]         send headers (streaming) or nothing, then stall until the client leaves
    [sim:slow=MS]      per-piece delay for this request, overriding --token-delay-ms
    [sim:rounds=N]     tool-call rounds before the answer (default 1)
    [sim:tool=NAME]    tool name to call instead of ``search``
    [sim:malformed]    the first round's tool call is not valid JSON
    [sim:noanswer]     never answer, always call another tool
    [sim:python]       call PythonInterpreter with a ``<code>`` block
    [sim:status=CODE]  answer HTTP CODE (429, 503, ...) at once, every time (Retry-After: 1)
    [sim:reset]        stream a few pieces, then drop the connection mid-stream
    [sim:garbage]      stream lines that are not JSON instead of chunks
    [sim:first-delay=MS]  wait this long after the headers before the first piece
    [sim:endless]      stream reasoning forever: never an answer, never [DONE]

A ``tok-...`` marker names the conversation in the replies; the tool calls search for the
question without it (as a model would: a test's session token is no search term).

Usage: python bench/llm_simulator.py --host 127.0.0.1 --port 0 [--token-delay-ms 0]
       [--model sim-model] [--chunk-chars 8]

It prints ``LISTENING http://HOST:PORT/v1`` once it accepts connections. ``GET /stats``
counts requests (in flight, at most at once, in all) and keeps, per conversation (its
``tok-`` marker), the sampling settings of each request (``asked``); ``POST
/stats/reset`` starts them again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MAX_MODEL_LEN = 32768
DEFAULT_TOOL = "search"
TOOL_RESPONSE_PREFIX = "<tool_response>"
MALFORMED_TOOL_CALL = "<tool_call>{not json</tool_call>"
PYTHON_TOOL_CALL = (
    '<tool_call>{"name": "PythonInterpreter", "arguments": ""}\n'
    "<code>\nprint(6*7)\n</code>\n</tool_call>"
)

TOKEN_RE = re.compile(r"\btok-[A-Za-z0-9]+\b")
# Swallows the whitespace before a directive so "a [sim:x] b" cleans to "a b", not "a  b".
DIRECTIVE_RE = re.compile(r"\s*\[sim:([A-Za-z][A-Za-z0-9_-]*)(?:=([^\]]*))?\]")


# --------------------------------------------------------------------------- request models


class ChatMessage(BaseModel):
    # Unknown fields (name, tool_calls, ...) are allowed: real clients send them.
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text; OpenAI content-part lists are flattened to their text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # Sampling parameters are accepted so the agent's real requests validate; they change nothing.
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


# --------------------------------------------------------------------------- reply script


@dataclass(frozen=True)
class Directives:
    error: bool = False
    error_once: bool = False
    hang: bool = False
    slow_ms: float | None = None
    rounds: int = 1
    tool: str = DEFAULT_TOOL
    malformed: bool = False
    noanswer: bool = False
    python: bool = False
    status: int | None = None
    reset: bool = False
    garbage: bool = False
    first_delay_ms: float | None = None
    endless: bool = False


def parse_directives(question: str) -> Directives:
    flags: dict[str, str | None] = {
        m.group(1).lower(): m.group(2) for m in DIRECTIVE_RE.finditer(question)
    }
    slow = flags.get("slow")
    rounds = flags.get("rounds")
    tool = flags.get("tool")
    return Directives(
        error="error" in flags,
        error_once="error-once" in flags,
        hang="hang" in flags,
        slow_ms=float(slow) if slow else None,
        rounds=int(rounds) if rounds else 1,
        tool=tool.strip() if tool and tool.strip() else DEFAULT_TOOL,
        malformed="malformed" in flags,
        noanswer="noanswer" in flags,
        python="python" in flags,
        status=int(status) if (status := flags.get("status")) else None,
        reset="reset" in flags,
        garbage="garbage" in flags,
        first_delay_ms=float(delay) if (delay := flags.get("first-delay")) else None,
        endless="endless" in flags,
    )


def strip_directives(question: str) -> str:
    return DIRECTIVE_RE.sub("", question).strip()


def search_query(question: str) -> str:
    """What the simulated model searches for: the question without its directives or its
    tok- marker (a model searches for the topic, not for a test's session token)."""
    cleaned = strip_directives(question)
    return " ".join(TOKEN_RE.sub(" ", cleaned).split()) or cleaned


def question_token(question: str) -> str:
    match = TOKEN_RE.search(question)
    if match is not None:
        return match.group(0)
    # Without a tok- marker the cleaned question identifies the conversation; directives are
    # left out so they never leak into the reply text.
    return strip_directives(question)[:60]


@dataclass(frozen=True)
class Conversation:
    """What the reply script needs to know about an incoming chat request."""

    question: str
    message_count: int
    rounds_done: int
    malformed_already_sent: bool
    has_assistant_turn: bool

    @classmethod
    def from_messages(cls, messages: list[ChatMessage]) -> Conversation | None:
        user_texts = [m.text() for m in messages if m.role == "user"]
        if not user_texts:
            return None
        assistant_texts = [m.text() for m in messages if m.role == "assistant"]
        return cls(
            question=user_texts[0],
            message_count=len(messages),
            rounds_done=sum(t.lstrip().startswith(TOOL_RESPONSE_PREFIX) for t in user_texts),
            malformed_already_sent=any(MALFORMED_TOOL_CALL in t for t in assistant_texts),
            has_assistant_turn=bool(assistant_texts),
        )


def scripted_reply(conv: Conversation, directives: Directives) -> str:
    token = question_token(conv.question)
    if directives.noanswer or conv.rounds_done < directives.rounds:
        think = (
            f"<think>I should search for evidence about {token} "
            f"(round {conv.rounds_done + 1}).</think>\n"
        )
        # The history check keeps an agent that re-prompts without a <tool_response> from
        # receiving the malformed call forever.
        if directives.malformed and conv.rounds_done == 0 and not conv.malformed_already_sent:
            return think + MALFORMED_TOOL_CALL
        if directives.python:
            return think + PYTHON_TOOL_CALL
        call = {"name": directives.tool, "arguments": {"query": [search_query(conv.question)]}}
        return f"{think}<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"
    return (
        f"<think>The evidence answers the question about {token}.</think>\n"
        f"<answer>The answer for {token} is supported by the evidence [1].</answer>"
    )


def apply_stop(text: str, stop: str | list[str] | None) -> str:
    """Cut at the earliest stop string, excluding it, as vLLM does."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def approx_tokens(text: str) -> int:
    return len(text) // 4


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------- server state


# How many conversations /stats keeps the sampling settings of (the latest ones).
ASKED_CONVERSATIONS = 1000
SAMPLING = ("temperature", "top_p", "presence_penalty", "max_tokens")


@dataclass
class Stats:
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    # Per conversation (its tok- marker): the sampling settings of each request, in order.
    asked: dict[str, list[dict[str, float | int | None]]] = field(default_factory=dict)

    def ask(self, conversation: str, request: ChatRequest) -> None:
        self.asked.setdefault(conversation, []).append(
            {name: getattr(request, name) for name in SAMPLING}
        )
        while len(self.asked) > ASKED_CONVERSATIONS:
            del self.asked[next(iter(self.asked))]

    @contextmanager
    def track(self) -> Iterator[None]:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def reset(self) -> None:
        self.max_in_flight = self.in_flight
        self.requests = 0
        self.asked.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "requests": self.requests,
            "asked": self.asked,
        }


@dataclass
class SimulatorConfig:
    model: str = "sim-model"
    token_delay_ms: float = 0.0
    chunk_chars: int = 8


@dataclass
class SimulatorState:
    config: SimulatorConfig
    stats: Stats = field(default_factory=Stats)
    # Questions that already received their one [sim:error-once] failure.
    failed_once: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- chat completions


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client left before sending the body")
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _stall_forever() -> None:
    # Waits on an event nobody sets: only the disconnect watcher's cancellation ends it, and the
    # event loop stays free for other requests meanwhile.
    await asyncio.Event().wait()


def _error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ChatCompletions:
    """ASGI app for POST /v1/chat/completions.

    It is raw ASGI rather than a Starlette endpoint so one try/finally spans the whole exchange
    (body, generation, streaming) and a disconnect watcher can cancel generation on every path,
    including a stalled non-streaming response that has sent nothing yet.
    """

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.state.stats.track():
            try:
                body = await _read_body(receive)
            except ConnectionAbortedError:
                return
            producer = asyncio.create_task(self._respond(body, send))
            watcher = asyncio.create_task(_wait_for_disconnect(receive))
            try:
                done, _ = await asyncio.wait(
                    {producer, watcher}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                producer.cancel()
                watcher.cancel()
                await asyncio.gather(producer, watcher, return_exceptions=True)
            if producer in done:
                # Surface bugs in the producer instead of hiding them behind the gather.
                # A simulated reset propagates too: uvicorn then drops the connection.
                producer.result()

    async def _respond(self, body: bytes, send: Send) -> None:
        try:
            request = ChatRequest.model_validate_json(body)
        except ValidationError as exc:
            await _send_json(send, 400, _error_body(str(exc), "BadRequestError", 400))
            return
        conv = Conversation.from_messages(request.messages)
        if conv is None:
            err = _error_body("messages must contain a user message", "BadRequestError", 400)
            await _send_json(send, 400, err)
            return
        self.state.stats.ask(question_token(conv.question), request)
        directives = parse_directives(conv.question)
        if directives.error or self._fail_once(conv, directives):
            err = _error_body("simulated failure", "InternalServerError", 500)
            await _send_json(send, 500, err)
            return

        if directives.status is not None:
            err = _error_body("simulated status", "SimulatedError", directives.status)
            await _send_json(send, directives.status, err, retry_after=1)
            return
        model = request.model or self.state.config.model
        if directives.hang:
            if request.stream:
                await _send_sse_start(send)
            await _stall_forever()

        text = apply_stop(scripted_reply(conv, directives), request.stop)
        delay_ms = (
            directives.slow_ms
            if directives.slow_ms is not None
            else self.state.config.token_delay_ms
        )
        parts = pieces(text, self.state.config.chunk_chars)
        usage = {
            "prompt_tokens": approx_tokens("".join(m.text() for m in request.messages)),
            "completion_tokens": approx_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        if not request.stream:
            # Generation time is still simulated so non-streaming clients see realistic latency.
            for _ in parts:
                await _pause(delay_ms)
            await _send_json(
                send,
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        await _send_sse_start(send)
        if directives.first_delay_ms is not None:
            await _pause(directives.first_delay_ms)
        if directives.garbage:
            for _ in range(3):
                await send({"type": "http.response.body", "body": b"data: <html>oops\n\n",
                            "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # vLLM opens with an empty role-only delta; clients that rely on it keep working.
        await _send_event(send, chunk({"role": "assistant", "content": ""}, None))
        if directives.endless:
            while True:
                await _pause(delay_ms or 10)
                await _send_event(send, chunk({"content": "thinking more "}, None))
        if directives.reset:
            for part in parts[:3]:
                await _send_event(send, chunk({"content": part}, None))
            raise ConnectionResetError("simulated reset mid-stream")
        for part in parts:
            await _pause(delay_ms)
            await _send_event(send, chunk({"content": part}, None))
        await _send_event(send, chunk({}, "stop"))
        if request.stream_options is not None and request.stream_options.include_usage:
            final = chunk({}, None)
            final["choices"] = []
            final["usage"] = usage
            await _send_event(send, final)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def _fail_once(self, conv: Conversation, directives: Directives) -> bool:
        # Only the conversation's opening request fails, so a retry of the same request succeeds
        # and later rounds are never affected.
        if not directives.error_once or conv.has_assistant_turn:
            return False
        if conv.question in self.state.failed_once:
            return False
        self.state.failed_once.add(conv.question)
        return True


async def _pause(delay_ms: float) -> None:
    # A zero delay still yields so concurrent streams interleave as they would on a real server.
    await asyncio.sleep(delay_ms / 1000 if delay_ms > 0 else 0)


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], retry_after: int | None = None
) -> None:
    data = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _send_sse_start(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
            ],
        }
    )


async def _send_event(send: Send, payload: dict[str, Any]) -> None:
    data = f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
    await send({"type": "http.response.body", "body": data, "more_body": True})


# --------------------------------------------------------------------------- other routes


def build_app(config: SimulatorConfig) -> Starlette:
    state = SimulatorState(config=config)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": config.model, "object": "model"}]})

    async def tokenize(request: Request) -> Response:
        try:
            body = TokenizeRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse(_error_body(str(exc), "BadRequestError", 400), status_code=400)
        if body.prompt is not None:
            text = body.prompt
        else:
            text = "\n".join(m.text() for m in body.messages or [])
        return JSONResponse(
            {"count": approx_tokens(text), "max_model_len": MAX_MODEL_LEN, "tokens": []}
        )

    async def stats(_: Request) -> Response:
        return JSONResponse(state.stats.as_json())

    async def stats_reset(_: Request) -> Response:
        state.stats.reset()
        return JSONResponse(state.stats.as_json())

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", ChatCompletions(state), methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/reset", stats_reset, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- process entry


class AnnouncingServer(uvicorn.Server):
    """Prints the LISTENING line only after the socket is bound, with the real port for --port 0."""

    def __init__(self, config: uvicorn.Config, host: str) -> None:
        super().__init__(config)
        self.announce_host = host

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        host = f"[{self.announce_host}]" if ":" in self.announce_host else self.announce_host
        print(f"LISTENING http://{host}:{port}/v1", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--model", default="sim-model")
    parser.add_argument("--chunk-chars", type=int, default=8)
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    if args.chunk_chars < 1:
        parser.error("--chunk-chars must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = build_app(
        SimulatorConfig(
            model=args.model,
            token_delay_ms=args.token_delay_ms,
            chunk_chars=args.chunk_chars,
        )
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        # Hanging requests must not delay shutdown of a test fixture.
        timeout_graceful_shutdown=1,
    )
    AnnouncingServer(config, args.host).run()


if __name__ == "__main__":
    main()
