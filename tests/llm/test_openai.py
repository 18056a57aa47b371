"""The OpenAI-compatible backend against hand-made responses in the API's format."""

from __future__ import annotations

import json

import httpx
import pytest

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm import OpenAICompatibleModel
from deepresearch.llm.base import CallContext, Message, NativeToolCall

MESSAGES: list[Message] = [{"role": "user", "content": "How is asthma treated?"}]
ROUND = CallContext("sid-1", "round")
COUNT = CallContext("sid-1", "count")


def sse(*chunks: dict[str, object]) -> bytes:
    lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def delta(**fields: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": fields}]}


def model_with(handler: httpx.MockTransport, **options: object) -> OpenAICompatibleModel:
    client = httpx.AsyncClient(transport=handler)
    return OpenAICompatibleModel(client, "http://llm.test/v1", **options)  # type: ignore[arg-type]


async def collect(model: OpenAICompatibleModel, **kw: object) -> list[object]:
    stop = ["<tool_response>"]
    return [
        piece
        async for piece in model.stream(MESSAGES, GenerationSettings(), stop, call=ROUND, **kw)  # type: ignore[arg-type]
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


async def test_tokenize_is_used_when_offered_and_estimated_otherwise() -> None:
    def vllm(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/tokenize"
        return httpx.Response(200, json={"count": 1234, "max_model_len": 131072})

    assert (
        await model_with(httpx.MockTransport(vllm), model="m").count_tokens(MESSAGES, call=COUNT)
        == 1234
    )

    asked = []

    def plain(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404)

    model = model_with(httpx.MockTransport(plain), model="m")
    first = await model.count_tokens(MESSAGES, call=COUNT)
    second = await model.count_tokens(MESSAGES, call=COUNT)
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
    assert await model.count_tokens(MESSAGES, call=COUNT) > 0  # estimated this once
    assert await model.count_tokens(MESSAGES, call=COUNT) == 77


async def test_reasoning_content_comes_back_as_think_text() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=sse(
                delta(reasoning_content="Steroids "),
                delta(reasoning_content="first."),
                delta(content="<answer>Inhaled steroids.</answer>"),
            ),
        )

    pieces = await collect(model_with(httpx.MockTransport(handle), model="m"))
    assert "".join(str(p) for p in pieces) == (
        "<think>Steroids first.</think><answer>Inhaled steroids.</answer>"
    )


async def test_a_reply_of_reasoning_only_still_closes_its_think_block() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(delta(reasoning_content="hmm")))

    pieces = await collect(model_with(httpx.MockTransport(handle), model="m"))
    assert "".join(str(p) for p in pieces) == "<think>hmm</think>"


async def test_credentials_in_the_url_are_never_shown() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="down")

    client = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    model = OpenAICompatibleModel(client, "http://user:s3cret@llm.test:8000/v1?key=k", model="m")
    with pytest.raises(BackendError) as raised:
        await collect(model)
    assert "s3cret" not in str(raised.value) and "key=k" not in str(raised.value)
    assert model.states()[0].url == "http://llm.test:8000/v1"


async def test_vllm_metrics_are_read_and_other_backends_are_asked_once() -> None:
    page = "\n".join(
        [
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{model_name="m"} 3.0',
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{model_name="m"} 12.0',
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.5',
            "# TYPE vllm:num_preemptions_total counter",
            'vllm:num_preemptions_total{model_name="m"} 7.0',
            "",
        ]
    )

    def vllm(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        return httpx.Response(200, text=page)

    signals = await model_with(httpx.MockTransport(vllm), model="m").signals()
    assert signals is not None
    assert (signals.waiting, signals.running, signals.kv_usage, signals.preemptions) == (
        3.0,
        12.0,
        0.5,
        7.0,
    )
    asked = []

    def llama(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404)

    plain = model_with(httpx.MockTransport(llama), model="m")
    assert await plain.signals() is None and await plain.signals() is None
    assert asked == ["/metrics"]
