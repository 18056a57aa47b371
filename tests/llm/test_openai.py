"""The OpenAI-compatible backend against hand-made responses in the API's format."""

from __future__ import annotations

import json

import httpx
import pytest

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm import OpenAICompatibleModel, RetryingModel
from deepresearch.llm.base import Message, NativeToolCall

MESSAGES: list[Message] = [{"role": "user", "content": "How is asthma treated?"}]


def sse(*chunks: dict[str, object]) -> bytes:
    lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def delta(**fields: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": fields}]}


def model_with(handler: httpx.MockTransport, **options: object) -> OpenAICompatibleModel:
    client = httpx.AsyncClient(transport=handler)
    return OpenAICompatibleModel(client, "http://llm.test/v1", **options)  # type: ignore[arg-type]


async def collect(model: OpenAICompatibleModel | RetryingModel, **kw: object) -> list[object]:
    return [
        piece
        async for piece in model.stream(MESSAGES, GenerationSettings(), ["<tool_response>"], **kw)  # type: ignore[arg-type]
    ]


async def test_streams_text_with_the_request_settings_and_the_listed_model() -> None:
    seen: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tongyi-30b"}]})
        seen.append(json.loads(request.content))
        assert request.headers["Authorization"] == "Bearer secret"
        return httpx.Response(
            200,
            content=sse(
                delta(role="assistant"), delta(content="Inhaled "), delta(content="steroids.")
            ),
        )

    model = model_with(httpx.MockTransport(handle), api_key="secret")
    assert await collect(model) == ["Inhaled ", "steroids."]
    body = seen[0]
    assert body["model"] == "tongyi-30b" and body["stream"] is True
    assert body["stop"] == ["<tool_response>"]
    assert (body["temperature"], body["top_p"], body["presence_penalty"]) == (0.85, 0.95, 1.1)
    assert model.states()[0].healthy is True


async def test_native_tool_calls_are_joined_from_their_pieces() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        call = {"index": 0, "id": "call_9", "function": {"name": "search", "arguments": '{"qu'}}
        rest = {"index": 0, "function": {"arguments": 'ery": ["x"]}'}}
        return httpx.Response(200, content=sse(delta(tool_calls=[call]), delta(tool_calls=[rest])))

    model = model_with(httpx.MockTransport(handle), model="m")
    pieces = await collect(model, tools=[{"type": "function", "function": {"name": "search"}}])
    assert pieces == [NativeToolCall("call_9", "search", '{"query": ["x"]}')]


async def test_http_errors_and_timeouts_become_backend_errors() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="overloaded")

    model = model_with(httpx.MockTransport(fail), model="m")
    with pytest.raises(BackendError, match="HTTP 500: overloaded"):
        await collect(model)
    assert model.states()[0].healthy is False

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("silent", request=request)

    with pytest.raises(BackendError, match="timed out"):
        await collect(model_with(httpx.MockTransport(hang), model="m"))


async def test_retrying_model_retries_only_before_the_first_piece() -> None:
    attempts = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:
            return httpx.Response(503)
        return httpx.Response(200, content=sse(delta(content="ok")))

    model = RetryingModel(model_with(httpx.MockTransport(flaky), model="m"), retries=2, backoff=0)
    assert await collect(model) == ["ok"] and len(attempts) == 2


async def test_tokenize_is_used_when_offered_and_estimated_otherwise() -> None:
    def vllm(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/tokenize"
        return httpx.Response(200, json={"count": 1234, "max_model_len": 131072})

    assert await model_with(httpx.MockTransport(vllm), model="m").count_tokens(MESSAGES) == 1234

    asked = []

    def plain(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404)

    model = model_with(httpx.MockTransport(plain), model="m")
    first = await model.count_tokens(MESSAGES)
    second = await model.count_tokens(MESSAGES)
    assert first == second > 0
    assert asked == ["/tokenize"]  # learned once that this backend cannot tokenize


async def test_an_error_object_mid_stream_is_a_failure_not_a_short_answer() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        error = {"object": "error", "message": "KV cache exhausted", "code": 500}
        return httpx.Response(200, content=sse(delta(content="Half an ans"), error))

    model = model_with(httpx.MockTransport(handle), model="m")
    with pytest.raises(BackendError, match="KV cache exhausted"):
        await collect(model)
    assert model.states()[0].healthy is False


async def test_a_passing_tokenize_failure_does_not_switch_the_tokenizer_off() -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, json={"count": 77})])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers)

    model = model_with(httpx.MockTransport(flaky), model="m")
    assert await model.count_tokens(MESSAGES) > 0  # estimated this once
    assert await model.count_tokens(MESSAGES) == 77
