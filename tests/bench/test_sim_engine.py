"""The vLLM simulator's engine (bench/sim_engine.py), driven step by step with no wall clock."""

from __future__ import annotations

import pytest
from sim_engine import BLOCK_SIZE, CostModel, Engine, EngineConfig, Request, block_hashes

CHARS = 4  # the simulator's tokens are 4 characters


def request(engine: Engine, rid: str, prompt: str, output_tokens: int) -> Request:
    prompt_tokens = -(-len(prompt) // CHARS)
    text = prompt + rid[0] * (output_tokens * CHARS)
    req = Request(rid, prompt_tokens, output_tokens, block_hashes(text))
    engine.add(req)
    return req


def test_step_time_follows_the_batch_as_calibrated() -> None:
    cost = CostModel()
    # Qwen3-30B-A3B in BF16 on one H100: ~6 ms a decode step alone, ~20 ms for 32.
    assert cost.step_seconds(1, 0, 0) == pytest.approx(0.006, rel=0.02)
    assert cost.step_seconds(32, 0, 0) == pytest.approx(0.020, rel=0.02)
    assert cost.step_seconds(8, 0, 0) < cost.step_seconds(16, 0, 0)
    # Reading context and attending over it cost more; a slower GPU takes longer.
    assert cost.step_seconds(1, 100_000, 0) > cost.step_seconds(1, 0, 0)
    assert CostModel(speed=0.5).step_seconds(4, 0, 0) == pytest.approx(
        2 * cost.step_seconds(4, 0, 0)
    )


def test_one_decode_step_serves_every_running_request() -> None:
    engine = Engine(EngineConfig())
    requests = [request(engine, f"r{n}", f"prompt {n} " * 50, 40) for n in range(4)]
    first = engine.schedule()
    assert first is not None
    assert {r for r, _ in first.work} == set(requests)  # all admitted and prefilled together
    engine.commit(first)
    step = engine.schedule()
    assert step is not None
    assert [(r, n) for r, n in step.work] == [(r, 1) for r in requests]
    total = engine.run_until_idle()
    assert all(r.state == "finished" and r.generated == 40 for r in requests)
    # Batched: far less than four requests one after the other.
    alone = Engine(EngineConfig())
    request(alone, "solo", "prompt 0 " * 50, 40)
    assert total < 2 * alone.run_until_idle()


def test_a_repeated_prefix_is_served_from_the_cache() -> None:
    engine = Engine(EngineConfig())
    prefix = "the shared conversation so far " * 200  # 1,550 tokens
    request(engine, "a", prefix, 10)
    engine.run_until_idle()
    assert engine.totals.prefix_hits == 0
    request(engine, "b", prefix + "and one more turn", 10)
    engine.run_until_idle()
    full_blocks = len(prefix) // (BLOCK_SIZE * CHARS)
    assert engine.totals.prefix_hits == full_blocks * BLOCK_SIZE
    queries = engine.totals.prefix_queries
    request(engine, "c", "an unrelated question " * 200, 10)
    engine.run_until_idle()
    assert engine.totals.prefix_hits == full_blocks * BLOCK_SIZE  # no false hits
    assert engine.totals.prefix_queries > queries


def test_freed_blocks_are_evicted_least_recently_freed_first() -> None:
    # 100 blocks: A and B fit together, C needs most of the cache.
    engine = Engine(EngineConfig(kv_tokens=1600, max_model_len=1600))
    a, b = "alpha " * 160, "bravo " * 160  # 240 tokens, 15 blocks each
    request(engine, "a", a, 1)
    engine.run_until_idle()
    request(engine, "b", b, 1)
    engine.run_until_idle()
    request(engine, "c", "charlie " * 610, 1)  # 1,220 tokens: 77 blocks, evicts some of A
    engine.run_until_idle()
    hits = engine.totals.prefix_hits
    request(engine, "b2", b + "again", 1)
    engine.run_until_idle()
    assert engine.totals.prefix_hits - hits == 15 * BLOCK_SIZE  # B, freed later, survived
    hits = engine.totals.prefix_hits
    request(engine, "a2", a + "again", 1)
    engine.run_until_idle()
    assert engine.totals.prefix_hits - hits < 15 * BLOCK_SIZE  # A lost blocks to C


def test_running_requests_that_outgrow_the_cache_are_preempted_and_recomputed() -> None:
    engine = Engine(EngineConfig(kv_tokens=1600, max_model_len=1600))
    requests = [request(engine, f"r{n}", f"request {n} " * 130, 300) for n in range(3)]
    # 3 x (~430 prompt + 300 output) tokens need ~2,200 tokens of KV; the cache holds 1,600.
    engine.run_until_idle()
    assert engine.totals.preemptions >= 1
    assert any(r.preemptions for r in requests)
    assert all(r.state == "finished" and r.generated == 300 for r in requests)
    assert engine.pool.usage == 0.0  # everything freed (cached blocks stay evictable)


def test_an_abort_frees_the_requests_blocks_at_once() -> None:
    engine = Engine(EngineConfig())
    req = request(engine, "a", "a long prompt " * 400, 1000)
    step = engine.schedule()
    assert step is not None
    engine.commit(step)
    assert engine.pool.usage > 0
    engine.abort(req)
    assert req.state == "aborted"
    assert engine.pool.usage == 0.0
    assert engine.idle
    assert engine.totals.aborted == 1
