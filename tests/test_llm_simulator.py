"""The LLM simulator (bench/llm_simulator.py), exercised as the real subprocess tests will use."""

from __future__ import annotations

import asyncio
import json
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "llm_simulator.py"
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
STOP = ["\n<tool_response>", "<tool_response>"]


@dataclass(frozen=True)
class Simulator:
    base: str  # e.g. http://127.0.0.1:1234

    @property
    def v1(self) -> str:
        return f"{self.base}/v1"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 15
        line = ""
        # select() bounds the wait so a simulator that crashes at startup fails the test quickly
        # instead of blocking readline() forever.
        while not line.startswith("LISTENING "):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "simulator did not announce LISTENING in time"
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if ready:
                line = proc.stdout.readline()
                assert line, f"simulator exited early with code {proc.poll()}"
        url = line.split()[1]
        assert url.endswith("/v1")
        yield Simulator(base=url.removesuffix("/v1"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


def chat_body(question: str, *extra: dict[str, str], stream: bool = False) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "You may call the tool `search`."},
        {"role": "user", "content": question},
        *extra,
    ]
    return {
        "model": "sim-model",
        "messages": messages,
        "stream": stream,
        "stop": STOP,
        "temperature": 0.6,
        "top_p": 0.95,
        "presence_penalty": 1.1,
        "max_tokens": 1000,
    }


async def stream_chunks(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request and return the decoded SSE payloads, "[DONE]" included verbatim."""
    events: list[Any] = []
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e["choices"]
    )


async def complete(client: httpx.AsyncClient, sim: Simulator, body: dict[str, Any]) -> str:
    response = await client.post(f"{sim.v1}/chat/completions", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "chat.completion"
    assert payload["choices"][0]["finish_reason"] == "stop"
    content: str = payload["choices"][0]["message"]["content"]
    return content


async def wait_for_stats(
    client: httpx.AsyncClient, sim: Simulator, key: str, expected: int
) -> dict[str, int]:
    """Poll /stats until stats[key] == expected; the server settles asynchronously."""
    stats: dict[str, int] = {}
    for _ in range(200):
        stats = (await client.get(f"{sim.base}/stats")).json()
        if stats[key] == expected:
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError(f"/stats never reached {key}={expected}: {stats}")


async def test_models_lists_the_served_model(sim: Simulator, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{sim.v1}/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [{"id": "sim-model", "object": "model"}]}
    assert (await client.get(f"{sim.base}/health")).status_code == 200


async def test_streamed_first_round_is_a_tool_call_with_the_query(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    question = "What treats tok-Ab12 in adults? [sim:rounds=1]"
    events = await stream_chunks(
        client, f"{sim.v1}/chat/completions", chat_body(question, stream=True)
    )

    assert events[-1] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    # Pieces are --chunk-chars (default 8) long, so a reply arrives in many deltas.
    deltas = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert sum(1 for d in deltas if d) > 5
    assert all(len(d) <= 8 for d in deltas if d)

    text = streamed_text(events)
    assert text.startswith("<think>") and "tok-Ab12" in text and "(round 1)" in text
    match = TOOL_CALL_RE.search(text)
    assert match is not None, text
    call = json.loads(match.group(1))
    # The search is for the question; the tok- marker names the conversation, not the topic.
    assert call == {"name": "search", "arguments": {"query": ["What treats in adults?"]}}


async def test_reply_after_tool_response_is_an_answer(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    question = "What treats tok-Xy9?"
    first = await complete(client, sim, chat_body(question))
    assert "<tool_call>" in first and "<answer>" not in first

    after = await complete(
        client,
        sim,
        chat_body(
            question,
            {"role": "assistant", "content": first},
            {"role": "user", "content": "<tool_response>\n[1] evidence\n</tool_response>"},
        ),
    )
    assert "<tool_call>" not in after
    answer = re.search(r"<answer>(.*)</answer>", after, re.DOTALL)
    assert answer is not None and "tok-Xy9" in answer.group(1)


async def test_rounds_python_tool_and_malformed_directives(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    tool_response = {"role": "user", "content": "<tool_response>ok</tool_response>"}

    two_rounds = "tok-R2 [sim:rounds=2] [sim:tool=lookup]"
    second = await complete(client, sim, chat_body(two_rounds, tool_response))
    match = TOOL_CALL_RE.search(second)
    assert match is not None and "(round 2)" in second
    assert json.loads(match.group(1))["name"] == "lookup"

    python = await complete(client, sim, chat_body("tok-Py [sim:python]"))
    assert '{"name": "PythonInterpreter", "arguments": ""}\n<code>\nprint(6*7)\n</code>' in python

    malformed = await complete(client, sim, chat_body("tok-M [sim:malformed] [sim:rounds=2]"))
    assert "<tool_call>{not json</tool_call>" in malformed
    recovered = await complete(
        client,
        sim,
        chat_body(
            "tok-M [sim:malformed] [sim:rounds=2]",
            {"role": "assistant", "content": malformed},
            tool_response,
        ),
    )
    match = TOOL_CALL_RE.search(recovered)
    assert match is not None and json.loads(match.group(1))["name"] == "search"


async def test_stop_sequence_cuts_the_reply(sim: Simulator, client: httpx.AsyncClient) -> None:
    body = chat_body("tok-St")
    body["stop"] = ["</think>"]
    text = await complete(client, sim, body)
    assert text == "<think>I should search for evidence about tok-St (round 1)."


async def test_error_directives(sim: Simulator, client: httpx.AsyncClient) -> None:
    url = f"{sim.v1}/chat/completions"
    failing = await client.post(url, json=chat_body("tok-E [sim:error]"))
    assert failing.status_code == 500
    assert "error" in failing.json()
    # [sim:error] fails every time, retries included.
    assert (await client.post(url, json=chat_body("tok-E [sim:error]"))).status_code == 500

    once = chat_body("tok-E1 [sim:error-once]")
    assert (await client.post(url, json=once)).status_code == 500
    retry = await client.post(url, json=once)
    assert retry.status_code == 200
    assert "<tool_call>" in retry.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [True, False])
async def test_hang_times_out_and_releases_in_flight(
    sim: Simulator, client: httpx.AsyncClient, stream: bool
) -> None:
    body = chat_body("tok-H [sim:hang]", stream=stream)
    timeout = httpx.Timeout(5.0, read=0.5)
    with pytest.raises(httpx.ReadTimeout):
        async with client.stream(
            "POST", f"{sim.v1}/chat/completions", json=body, timeout=timeout
        ) as response:
            # Streaming hangs after the headers; non-streaming never gets this far.
            assert stream and response.status_code == 200
            await response.aread()
    await wait_for_stats(client, sim, "in_flight", 0)


async def test_max_in_flight_counts_concurrent_requests(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    await wait_for_stats(client, sim, "in_flight", 0)
    reset = await client.post(f"{sim.base}/stats/reset")
    assert reset.json() == {"in_flight": 0, "max_in_flight": 0, "requests": 0, "asked": {}}

    url = f"{sim.v1}/chat/completions"
    bodies = [chat_body(f"tok-C{i} [sim:slow=30]", stream=True) for i in range(5)]
    started = time.monotonic()
    results = await asyncio.gather(*(stream_chunks(client, url, b) for b in bodies))
    elapsed = time.monotonic() - started

    assert all("<tool_call>" in streamed_text(events) for events in results)
    stats = (await client.get(f"{sim.base}/stats")).json()
    counts = {key: stats[key] for key in ("in_flight", "max_in_flight", "requests")}
    assert counts == {"in_flight": 0, "max_in_flight": 5, "requests": 5}
    assert sorted(stats["asked"]) == [f"tok-C{i}" for i in range(5)]
    # ~14 pieces at 30 ms each: overlapping requests take about as long as one, not five.
    assert 0.3 < elapsed < 2.0


async def test_tokenize_counts_prompt_and_messages(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    prompt = "x" * 400
    by_prompt = (await client.post(f"{sim.base}/tokenize", json={"prompt": prompt})).json()
    assert by_prompt == {"count": 100, "max_model_len": 32768, "tokens": []}

    by_messages = await client.post(
        f"{sim.base}/tokenize",
        json={"model": "sim-model", "messages": chat_body(prompt)["messages"]},
    )
    assert by_messages.status_code == 200
    assert by_messages.json()["count"] > 100


async def test_stats_record_each_conversations_sampling_settings(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    body = chat_body("tok-Sampled what is it?") | {"temperature": 0.1, "max_tokens": 321}
    (await client.post(f"{sim.v1}/chat/completions", json=body)).raise_for_status()
    (
        await client.post(f"{sim.v1}/chat/completions", json=chat_body("tok-Sampled again"))
    ).raise_for_status()
    asked = (await client.get(f"{sim.base}/stats")).json()["asked"]["tok-Sampled"]
    assert asked == [
        {"temperature": 0.1, "top_p": 0.95, "presence_penalty": 1.1, "max_tokens": 321},
        {"temperature": 0.6, "top_p": 0.95, "presence_penalty": 1.1, "max_tokens": 1000},
    ]
