"""The vLLM simulator over real HTTP (bench/vllm_sim.py as a process), as backends see it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ROOT, Process, _wait_for_line

SCRIPT = ROOT / "bench" / "vllm_sim.py"


def start(*args: str) -> Process:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--port", "0", *args], stdout=subprocess.PIPE, text=True
    )
    line = _wait_for_line(proc, "LISTENING ", 20)
    return Process(proc, line.split()[1].removesuffix("/v1"))


@pytest.fixture(scope="module")
def fast() -> Iterator[Process]:
    """A simulator 10,000 times faster than the GPU it simulates."""
    sim = start("--time-scale", "10000")
    try:
        yield sim
    finally:
        sim.stop()
        if sim.proc.stdout:
            sim.proc.stdout.close()


def metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def stream(base: str, body: dict[str, object]) -> tuple[str, str | None]:
    text, finish = "", None
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["delta"].get("content", "")
            finish = choice["finish_reason"] or finish
    return text, finish


def test_models_and_tokenize_answer_as_vllm_does(fast: Process) -> None:
    models = httpx.get(f"{fast.url}/v1/models").json()
    assert models["data"][0]["id"] == "sim-vllm"
    prompt = httpx.post(f"{fast.url}/tokenize", json={"model": "m", "prompt": "x" * 40}).json()
    assert prompt["count"] == 10
    assert prompt["max_model_len"] == 120_000
    messages = [{"role": "user", "content": "x" * 40}]
    chat = httpx.post(f"{fast.url}/tokenize", json={"model": "m", "messages": messages}).json()
    assert chat["count"] > 10  # the chat template's tokens count too
    bad = httpx.post(f"{fast.url}/tokenize", json={"model": "m"})
    assert bad.status_code == 400


def test_streams_a_scripted_round_honouring_stop_and_max_tokens(fast: Process) -> None:
    question = "What helps? [traj:short:7]"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
    text, finish = stream(fast.url, {**body, "stop": ["<tool_call>"]})
    assert text.startswith("<think>") and text.rstrip().endswith("</think>")
    assert finish == "stop"
    full, _ = stream(fast.url, body)
    assert "<tool_call>" in full and "[resp=" in full
    cut, finish = stream(fast.url, {**body, "max_tokens": 5})
    assert (cut, finish) == (full[:20], "length")
    too_long = httpx.post(f"{fast.url}/v1/chat/completions", json={**body, "max_tokens": 200_000})
    assert too_long.status_code == 400
    assert "maximum context length" in too_long.json()["message"]


def test_metrics_carry_vllms_names_and_count_prefix_hits(fast: Process) -> None:
    before = metrics(fast.url)
    labels = '{engine="0",model_name="sim-vllm"}'
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
    ):
        assert name + labels in before
    long_prompt = "a shared research conversation " * 300
    body = {"model": "m", "messages": [{"role": "user", "content": long_prompt}]}
    for _ in range(2):
        assert httpx.post(f"{fast.url}/v1/chat/completions", json=body).status_code == 200
    after = metrics(fast.url)
    hits = (
        after["vllm:prefix_cache_hits_total" + labels]
        - before["vllm:prefix_cache_hits_total" + labels]
    )
    assert hits >= len(long_prompt) // 4 - 16  # the second request reused the first's blocks
    assert after["vllm:time_to_first_token_seconds_count" + labels] >= 2


def test_metrics_can_be_hidden() -> None:
    sim = start("--time-scale", "10000", "--no-metrics")
    try:
        assert httpx.get(f"{sim.url}/metrics").status_code == 404
        assert httpx.get(f"{sim.url}/v1/models").status_code == 200
    finally:
        sim.stop()
        if sim.proc.stdout:
            sim.proc.stdout.close()


def test_a_client_that_leaves_aborts_its_request_and_frees_its_blocks() -> None:
    sim = start("--time-scale", "1")  # real time: a long reply takes seconds
    labels = '{engine="0",model_name="sim-vllm"}'
    try:
        # The first round of a long trajectory reasons for hundreds of tokens: seconds here.
        question = "Q [traj:long:3]"
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
        with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()  # kept open: leaving the loop would close the stream
            while not next(lines).startswith("data: "):
                pass  # the first token arrived: the request holds blocks now
            during = metrics(sim.url)
            assert during["vllm:num_requests_running" + labels] == 1
            assert during["vllm:kv_cache_usage_perc" + labels] > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = metrics(sim.url)
            if after["vllm:num_requests_running" + labels] == 0:
                break
            time.sleep(0.02)  # polling a condition with a deadline
        assert after["vllm:num_requests_running" + labels] == 0
        assert after["vllm:kv_cache_usage_perc" + labels] == 0.0
        aborted = (
            'vllm:request_success_total{engine="0",finished_reason="abort",model_name="sim-vllm"}'
        )
        assert after[aborted] == 1
    finally:
        sim.stop()
        if sim.proc.stdout:
            sim.proc.stdout.close()
