"""A vLLM stand-in faithful enough to benchmark serving against (no GPU needed).

It serves vLLM's OpenAI-compatible routes over the engine in ``sim_engine.py`` (continuous
batching, a paged KV cache with prefix caching and recompute pre-emption, a waiting queue),
on a simulated clock that runs ``--time-scale`` times faster than the wall clock
(``sim_driver.py``), with vLLM's metrics (``sim_metrics.py``):

    POST /v1/chat/completions   streaming (OpenAI SSE chunks) or not; ``stop``, ``max_tokens``
    GET  /v1/models
    POST /tokenize              ``{"count": N, "max_model_len": M, ...}`` for messages or prompt
    GET  /metrics               vLLM's Prometheus names (``--no-metrics``: 404, as llama.cpp)
    GET  /health
    GET  /sim/stats, POST /sim/reset   for the benchmark: totals since the last reset

Replies follow the trajectory named in the first user message (``[traj:SHAPE:SEED]``, see
``workload.py``); without one the reply is a short answer. A client that disconnects aborts
its request at once: its blocks go back to the free queue.

Usage: python bench/vllm_sim.py [--port 0] [--time-scale 60] [--speed 1.0] [--no-metrics]
It prints ``LISTENING http://HOST:PORT/v1`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from sim_driver import Driver
from sim_engine import CostModel, Engine, EngineConfig, Request, block_hashes
from sim_metrics import VllmCollector, stats

DEFAULT_REPLY = "<think>\nA direct question.\n</think>\n<answer>\nA short answer.\n</answer>"


@dataclass
class SimConfig:
    model: str = "sim-vllm"
    time_scale: float = 60.0  # simulated seconds per wall second
    stream_interval_ms: float = 50.0  # wall time between streamed chunks of one request
    metrics: bool = True
    cache_metric: str = "both"  # kv (vLLM >= 0.10), gpu (older), both


# --------------------------------------------------------------------------- requests


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ValueError("content must be a string, a list of parts or null")


def render(messages: list[dict[str, Any]]) -> str:
    """The prompt vLLM would build with a ChatML template (Qwen's) and a generation prompt."""
    parts = [f"<|im_start|>{m['role']}\n{message_text(m)}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def parse_messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError("each message needs a string role")
        message_text(m)
    return value


def apply_stop(text: str, stop: Any) -> str:
    """Cut at the earliest stop string, excluding it, as vLLM does."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def error_body(message: str, status: int) -> dict[str, Any]:
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


async def send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def read_body(receive: Receive) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class Planned:
    request: Request
    text: str
    finish_reason: str
    model: str
    stream: bool
    include_usage: bool


class ChatCompletions:
    """POST /v1/chat/completions as raw ASGI: a disconnect aborts the request on every path."""

    def __init__(self, driver: Driver, config: SimConfig) -> None:
        self.driver = driver
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return
        try:
            planned = self.plan(body)
        except ValueError as exc:
            await send_json(send, 400, error_body(str(exc), 400))
            return
        producer = asyncio.create_task(self.respond(planned, send))
        watcher = asyncio.create_task(wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            producer.cancel()
            watcher.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
            self.driver.abort(planned.request)  # a no-op once it finished
        if producer in done:
            producer.result()

    def plan(self, body: bytes) -> Planned:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        messages = parse_messages(data.get("messages"))
        engine = self.driver.engine
        limit = engine.config.max_model_len
        prompt = render(messages)
        prompt_tokens = workload.count_tokens(prompt)
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            max_tokens = limit - prompt_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer")
        if prompt_tokens + max_tokens > limit:
            raise ValueError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion."
            )
        first_user = next((message_text(m) for m in messages if m["role"] == "user"), "")
        scripted = workload.reply(first_user, workload.rounds_done(messages))
        text = apply_stop(scripted if scripted is not None else DEFAULT_REPLY, data.get("stop"))
        output = max(1, workload.count_tokens(text))
        finish = "stop"
        if output > max_tokens:
            output, finish = max_tokens, "length"
            text = text[: max_tokens * workload.CHARS_PER_TOKEN]
        request = Request(
            f"chatcmpl-{uuid.uuid4().hex}", prompt_tokens, output, block_hashes(prompt + text)
        )
        options = data.get("stream_options") or {}
        return Planned(
            request,
            text,
            finish,
            str(data.get("model") or self.config.model),
            bool(data.get("stream")),
            bool(isinstance(options, dict) and options.get("include_usage")),
        )

    async def respond(self, planned: Planned, send: Send) -> None:
        request = planned.request
        progress = asyncio.Event()
        request.notify = progress.set
        self.driver.submit(request)
        usage = {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": request.output_tokens,
            "total_tokens": request.prompt_tokens + request.output_tokens,
        }
        created = int(time.time())
        if not planned.stream:
            while not request.done:
                progress.clear()
                await progress.wait()
            if request.state == "aborted":
                await send_json(send, 500, error_body("the request was aborted", 500))
                return
            await send_json(
                send,
                200,
                {
                    "id": request.rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": planned.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": planned.text},
                            "finish_reason": planned.finish_reason,
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            payload = {
                "id": request.rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": planned.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        interval = self.config.stream_interval_ms / 1000
        while True:
            progress.clear()
            if request.state == "aborted":
                error = json.dumps(error_body("the request was aborted", 500))
                await send({"type": "http.response.body", "body": f"data: {error}\n\n".encode()})
                break
            visible = min(len(planned.text), request.generated * workload.CHARS_PER_TOKEN)
            if request.state == "finished":
                visible = len(planned.text)
            if visible > sent:
                out = b""
                if sent == 0:
                    out += chunk({"role": "assistant", "content": ""}, None)
                out += chunk({"content": planned.text[sent:visible]}, None)
                sent = visible
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if request.state == "finished":
                out = chunk({}, planned.finish_reason)
                if planned.include_usage:
                    final = {"id": request.rid, "object": "chat.completion.chunk",
                             "created": created, "model": planned.model, "choices": [],
                             "usage": usage}  # fmt: skip
                    out += f"data: {json.dumps(final)}\n\n".encode()
                out += b"data: [DONE]\n\n"
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            # Tokens are sent in batches every stream interval (wall time), and at once for the
            # first token and the end: a real vLLM streams each token, but per-token chunks at
            # a high time scale would cost the client more CPU than the simulated work.
            if sent == 0:
                await progress.wait()
            else:
                with suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await progress.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --------------------------------------------------------------------------- the app


def build_app(config: SimConfig, engine_config: EngineConfig) -> Starlette:
    state: dict[str, Driver] = {}

    def driver() -> Driver:
        return state["driver"]

    async def models(_: HttpRequest) -> Response:
        entry = {"id": config.model, "object": "model", "owned_by": "vllm",
                 "max_model_len": engine_config.max_model_len}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def tokenize(request: HttpRequest) -> Response:
        try:
            data = json.loads(await request.body())
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            if data.get("messages") is not None:
                text = render(parse_messages(data["messages"]))
            elif isinstance(data.get("prompt"), str):
                text = data["prompt"]
            else:
                raise ValueError("give messages or prompt")
        except ValueError as exc:
            return JSONResponse(error_body(str(exc), 400), status_code=400)
        # vLLM lists the token ids too; the count is what clients use, so they are left out.
        return JSONResponse(
            {"count": workload.count_tokens(text),
             "max_model_len": engine_config.max_model_len, "tokens": [], "token_strs": None}
        )  # fmt: skip

    registry = CollectorRegistry(auto_describe=False)

    async def metrics(_: HttpRequest) -> Response:
        if not config.metrics:
            return Response("Not Found", status_code=404)
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def health(_: HttpRequest) -> Response:
        return Response(status_code=200)

    async def sim_stats(_: HttpRequest) -> Response:
        return JSONResponse(stats(driver()))

    async def sim_reset(_: HttpRequest) -> Response:
        driver().reset()
        return JSONResponse(stats(driver()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["driver"] = Driver(Engine(engine_config), config.time_scale)
        registry.register(VllmCollector(state["driver"], config.model, config.cache_metric))  # type: ignore[arg-type]
        task = asyncio.create_task(state["driver"].run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    class Lazy:
        """The chat route needs the driver, which exists once the lifespan has started."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await ChatCompletions(driver(), config)(scope, receive, send)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", Lazy(), methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/sim/stats", sim_stats, methods=["GET"]),
        Route("/sim/reset", sim_reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class AnnouncingServer(uvicorn.Server):
    """Prints the LISTENING line once the socket is bound, with the real port."""

    def __init__(self, config: uvicorn.Config, host: str) -> None:
        super().__init__(config)
        self.announce_host = host

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"LISTENING http://{self.announce_host}:{port}/v1", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default="sim-vllm")
    parser.add_argument("--time-scale", type=float, default=60.0,
                        help="simulated seconds per wall-clock second")  # fmt: skip
    parser.add_argument("--speed", type=float, default=1.0,
                        help="GPU speed factor: 0.5 takes twice as long per step")  # fmt: skip
    parser.add_argument("--kv-tokens", type=int, default=120_000)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="default: the KV cache's size, as vLLM requires")  # fmt: skip
    parser.add_argument("--stream-interval-ms", type=float, default=50.0)
    parser.add_argument("--no-metrics", action="store_true", help="GET /metrics answers 404")
    parser.add_argument("--cache-metric", choices=["kv", "gpu", "both"], default="both")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    if args.time_scale <= 0 or args.speed <= 0:
        parser.error("--time-scale and --speed must be positive")
    if args.max_model_len is None:
        args.max_model_len = args.kv_tokens
    if args.max_model_len > args.kv_tokens:
        parser.error("--max-model-len cannot exceed --kv-tokens (vLLM refuses to start)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = SimConfig(
        model=args.model,
        time_scale=args.time_scale,
        stream_interval_ms=args.stream_interval_ms,
        metrics=not args.no_metrics,
        cache_metric=args.cache_metric,
    )
    engine_config = EngineConfig(
        kv_tokens=args.kv_tokens,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        cost=CostModel(speed=args.speed),
    )
    server_config = uvicorn.Config(
        build_app(config, engine_config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    AnnouncingServer(server_config, args.host).run()


if __name__ == "__main__":
    main()
