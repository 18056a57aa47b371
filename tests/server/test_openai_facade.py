"""The OpenAI-compatible facade, driven by the official ``openai`` client over real HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import MakeSettings
from tests.support import collect, running_app


def client_for(url: str, **options: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **options)  # type: ignore[arg-type]


async def test_models_lists_deepresearch(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, client_for(url) as client:
        assert [model.id async for model in client.models.list()] == ["deepresearch"]


async def test_a_completion_is_the_cited_answer_with_usage(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, client_for(url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="deepresearch",
            messages=[{"role": "user", "content": "tok-plain how is hypertension treated?"}],
        )
        session_id = raw.headers["x-session-id"]
        completion = raw.parse()
        content = completion.choices[0].message.content or ""
        assert "tok-plain" in content and "[1]" in content
        async with httpx.AsyncClient(base_url=url) as http:
            record = (await http.get(f"/sessions/{session_id}")).json()
        citation = record["citations"][0]
        assert content == (
            record["answer"] + f"\n\n**References**\n\n1. [{citation['title']}]({citation['url']})"
        )
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_streaming_sends_progress_as_reasoning_and_the_answer_as_content(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, client_for(url) as client:
        stream = await client.chat.completions.create(
            model="deepresearch",
            messages=[
                {"role": "user", "content": "tok-live how is asthma treated? [sim:rounds=2]"}
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        reasoning, content, finish, usage = "", "", None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                content += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert (
            "**Round 2**" in reasoning and "→ search:" in reasoning and "sources found" in reasoning
        )
        assert "tok-live" in reasoning  # the model's own reasoning, streamed
        assert content.startswith("The answer for tok-live")
        assert "\n\n**References**\n\n1. [" in content
        assert finish == "stop" and usage is not None and usage.total_tokens > 0


async def test_earlier_messages_are_the_conversation(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, client_for(url) as client:
        completion = await client.chat.completions.create(
            model="deepresearch",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "tok-before what is metformin?"},
                {"role": "assistant", "content": "A first-line drug for type 2 diabetes."},
                {"role": "user", "content": [{"type": "text", "text": "and its side effects?"}]},
            ],
        )
        # The simulator answers about the first tok- token it was sent.
        assert "tok-before" in (completion.choices[0].message.content or "")


async def test_errors_come_in_openais_shape(make_settings: MakeSettings) -> None:
    settings = make_settings(max_concurrent=1, max_queue=1)
    async with running_app(settings) as url, client_for(url) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "q"}]
            )
        assert missing.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="deepresearch", messages=[{"role": "assistant", "content": "hi"}]
            )
        assert bad.value.body["param"] == "messages"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="deepresearch",
                messages=[{"role": "user", "content": "q"}],
                temperature=9,
            )
        assert bad.value.body["param"] == "temperature"  # type: ignore[index]
        with pytest.raises(openai.APIError, match=r"500"):
            stream = await client.chat.completions.create(
                model="deepresearch",
                messages=[{"role": "user", "content": "tok-bad [sim:error]"}],
                stream=True,
            )
            async for _ in stream:
                pass
        async with httpx.AsyncClient(base_url=url) as http:
            await collect(
                http, "POST", "/chat/stream", json={"question": "tok-a [sim:hang]"}, limit=2
            )
            await collect(http, "POST", "/chat/stream", json={"question": "tok-b"}, limit=2)
        with pytest.raises(openai.APIStatusError) as full:
            await client.chat.completions.create(
                model="deepresearch", messages=[{"role": "user", "content": "tok-c"}]
            )
        assert full.value.status_code == 503
        assert int(full.value.response.headers["retry-after"]) >= 1
        assert full.value.body["type"] == "overloaded_error"  # type: ignore[index]


async def test_keys_apply_to_the_facade(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(api_keys=["key-1"])) as url:
        async with client_for(url) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="key-1") as client:
            assert [model.id async for model in client.models.list()] == ["deepresearch"]


async def test_a_browser_chat_ui_on_another_origin_may_call_it(make_settings: MakeSettings) -> None:
    # CORS is closed by default: the operator names the chat UI's origin.
    settings = make_settings(cors_origins=["http://localhost:3000"])
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
            },
        )
        assert preflight.status_code == 200
        assert "x-stainless-os" in preflight.headers["access-control-allow-headers"].lower()
        response = await client.post(
            "/v1/chat/completions",
            headers={"Origin": "http://localhost:3000"},
            json={"model": "deepresearch", "messages": [{"role": "user", "content": "tok-ui"}]},
        )
        assert response.status_code == 200
        assert "x-session-id" in response.headers["access-control-expose-headers"].lower()
