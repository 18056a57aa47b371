"""The scripted trajectories (bench/workload.py): the same work for every contender."""

from __future__ import annotations

import json
import re

import pytest
import workload


def test_a_trajectory_follows_from_its_question_and_fits_its_shape() -> None:
    for name, shape in workload.SHAPES.items():
        for seed in range(20):
            plan = workload.plan(name, seed)
            assert plan == workload.trajectory_of(workload.question(name, seed))
            assert plan.rounds[-1].tool == 0  # the answer round
            assert plan.tool_rounds <= shape.rounds[1]
            for step in plan.rounds[:-1]:
                assert shape.reasoning[0] <= step.reasoning <= shape.reasoning[1]
                assert shape.tool[0] <= step.tool <= shape.tool[1]
            assert plan.prompt_tokens() <= shape.max_context
    assert workload.trajectory_of("a question without a directive") is None


def test_each_round_asks_for_its_planned_results_and_the_last_answers() -> None:
    question = workload.question("medium", 5)
    plan = workload.plan("medium", 5)
    for done, step in enumerate(plan.rounds[:-1]):
        reply = workload.reply(question, done)
        assert reply is not None
        thought = reply[reply.index("<think>") + 8 : reply.index("</think>") - 1]
        assert workload.count_tokens(thought) == step.reasoning
        call = json.loads(re.search(r"<tool_call>(.*)</tool_call>", reply, re.DOTALL)[1])
        query = call["arguments"]["query"][0]
        text, sources = workload.padded_results(query)
        assert workload.count_tokens(text) == step.tool
        assert workload.padded_results(query) == (text, sources)  # the same for everyone
    last = workload.reply(question, plan.tool_rounds)
    assert last is not None and "<answer>" in last and "[1]" in last
    conversation = [{"role": "user", "content": question}] + [
        {"role": "user", "content": "<tool_response>\n...\n</tool_response>"}
    ] * 2
    assert workload.rounds_done(conversation) == 2


def test_a_tool_call_takes_the_same_realistic_time_for_everyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queries = [f"q{n} round 1: evidence [resp=2500]" for n in range(200)]
    seconds = [workload.tool_seconds(q) for q in queries]
    assert seconds == [workload.tool_seconds(q) for q in queries]  # seeded by the query
    assert all(1.0 <= s <= 12.0 for s in seconds)
    visits = sum(s > workload.SEARCH_SECONDS[1] for s in seconds)
    assert 60 <= visits <= 140  # about half the rounds fetch pages
    monkeypatch.setenv(workload.TIME_SCALE_ENV, "60")
    assert workload.tool_wait(queries[0]) == seconds[0] / 60  # wall seconds at 60x
    monkeypatch.setenv(workload.TOOL_LATENCY_ENV, "0")
    assert workload.tool_wait(queries[0]) == 0.0
