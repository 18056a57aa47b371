"""Scripted Tongyi DeepResearch trajectories for the serving benchmark.

A question carries its trajectory as a directive, ``[traj:SHAPE:SEED]``; everything else
follows from it deterministically, so every contender (the seed baseline, deepresearch, the
LangGraph peer) sends the simulator the same work:

- the simulator (``vllm_sim.py``) answers round *k* of the conversation with the scripted
  reply: ``<think>`` reasoning of the planned length, then one ``search`` call, or in the last
  round the ``<answer>``;
- the search call's query names the size of its result, ``[resp=N]``, and the benchmark's
  search tool (``padded_results``) returns text of exactly that many tokens, seeded by the
  query, so the tool responses are the same size and text for every contender;
- the tool takes as long as a real one would (``tool_seconds``, seeded by the query too):
  a web search or a page fetch, seconds each, during which the session makes no model call.
  Every contender's tool waits it out (``tool_wait``: simulated seconds over the time scale
  in ``BENCH_TIME_SCALE``), the seed in its thread as its sync tools would, the others
  asynchronously.

Tokens are 4 characters (``CHARS_PER_TOKEN``): cheap, deterministic, and prefix-stable (the
tokens of a text's prefix are a prefix of its tokens), which is what prefix caching needs.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
# Room the agent keeps for a reply (deepresearch's default max_tokens) under its 110k budget.
CONTEXT_BUDGET = 110_000
REPLY_ROOM = 8192
# The system prompt and question, in tokens, before the first round (measured: ~480).
OPENING_TOKENS = 600
# Tokens a round adds besides reasoning and tool text: tags, the call, the chat template.
ROUND_OVERHEAD = 90

DIRECTIVE = re.compile(r"\[traj:([a-z]+):(\d+)\]")
RESPONSE_SIZE = re.compile(r"\[resp=(\d+)\]")
TOOL_RESPONSE = "<tool_response>"

WORDS = [
    "evidence",
    "trial",
    "cohort",
    "randomized",
    "placebo",
    "outcome",
    "mortality",
    "risk",
    "ratio",
    "confidence",
    "interval",
    "dose",
    "regimen",
    "adverse",
    "event",
    "guideline",
    "meta-analysis",
    "systematic",
    "review",
    "baseline",
    "follow-up",
    "patients",
    "therapy",
    "treatment",
    "diagnosis",
    "prevalence",
    "incidence",
    "biomarker",
    "sensitivity",
    "specificity",
    "observational",
    "controlled",
    "blinded",
    "endpoint",
    "hazard",
    "subgroup",
    "heterogeneity",
    "bias",
    "protocol",
    "clinical",
    "primary",
    "secondary",
    "efficacy",
    "safety",
    "tolerability",
    "adherence",
    "intervention",
    "comparator",
    "population",
    "sample",
    "statistical",
    "significant",
    "association",
    "effect",
    "estimate",
    "month",
    "year",
    "week",
    "hospital",
    "admission",
    "readmission",
    "quality",
    "life",
    "score",
    "scale",
    "index",
    "measure",
    "reported",
    "analysis",
]


def count_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def words(rng: random.Random, tokens: int) -> str:
    """Deterministic filler of exactly ``tokens`` tokens (``tokens * 4`` characters)."""
    chars = tokens * CHARS_PER_TOKEN
    pieces: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        pieces.append(word)
        size += len(word) + 1
    return " ".join(pieces)[:chars]


@dataclass(frozen=True)
class Shape:
    """A workload shape: ranges the trajectories draw from, in tokens."""

    name: str
    rounds: tuple[int, int]  # tool rounds before the answer
    reasoning: tuple[int, int]  # <think> text per round
    tool: tuple[int, int]  # one search result
    answer: tuple[int, int]  # the final <answer>
    max_context: int  # the prompt never grows past this


SHAPES: dict[str, Shape] = {
    "short": Shape("short", (5, 8), (300, 800), (2000, 3000), (200, 400), 40_000),
    "medium": Shape("medium", (6, 10), (300, 1200), (2500, 4500), (300, 600), 50_000),
    "long": Shape("long", (14, 30), (300, 1500), (4000, 8000), (400, 800), 100_000),
}


@dataclass(frozen=True)
class Round:
    reasoning: int  # tokens of <think> text
    tool: int  # tokens of the search result the call asks for (0 in the answer round)


@dataclass(frozen=True)
class Trajectory:
    shape: str
    seed: int
    rounds: tuple[Round, ...]  # tool rounds, then the answer round (tool == 0)
    answer: int

    @property
    def tool_rounds(self) -> int:
        return len(self.rounds) - 1

    def prompt_tokens(self) -> int:
        """Roughly the prompt of the last round, in tokens."""
        return OPENING_TOKENS + sum(r.reasoning + r.tool + ROUND_OVERHEAD for r in self.rounds[:-1])


def plan(shape_name: str, seed: int) -> Trajectory:
    """The trajectory for ``[traj:shape_name:seed]``: the same every time it is asked."""
    shape = SHAPES[shape_name]
    rng = random.Random(f"{shape_name}:{seed}")
    wanted = rng.randint(*shape.rounds)
    context = OPENING_TOKENS
    rounds: list[Round] = []
    limit = min(shape.max_context, CONTEXT_BUDGET - REPLY_ROOM)
    for _ in range(wanted):
        step = Round(rng.randint(*shape.reasoning), rng.randint(*shape.tool))
        grown = context + step.reasoning + step.tool + ROUND_OVERHEAD
        if grown > limit:
            break
        rounds.append(step)
        context = grown
    answer = rng.randint(*shape.answer)
    rounds.append(Round(rng.randint(*shape.reasoning), 0))
    return Trajectory(shape_name, seed, tuple(rounds), answer)


def question(shape_name: str, seed: int) -> str:
    topic = " ".join(random.Random(f"q:{seed}").sample(WORDS, 4))
    return (
        f"Research question {seed}: what does the evidence say about {topic}? "
        f"[traj:{shape_name}:{seed}]"
    )


def trajectory_of(text: str) -> Trajectory | None:
    match = DIRECTIVE.search(text)
    if match is None or match.group(1) not in SHAPES:
        return None
    return plan(match.group(1), int(match.group(2)))


def reply(first_user_message: str, rounds_done: int) -> str | None:
    """The model's scripted reply in round ``rounds_done + 1``; None without a directive."""
    trajectory = trajectory_of(first_user_message)
    if trajectory is None:
        return None
    index = min(rounds_done, len(trajectory.rounds) - 1)
    step = trajectory.rounds[index]
    rng = random.Random(f"{trajectory.shape}:{trajectory.seed}:{index}")
    think = f"<think>\n{words(rng, step.reasoning)}\n</think>\n"
    if step.tool == 0:
        body = words(rng, trajectory.answer)
        return f"{think}<answer>\n{body} [1][2].\n</answer>"
    query = f"q{trajectory.seed} round {index + 1}: {words(rng, 6).strip()} [resp={step.tool}]"
    call = {"name": "search", "arguments": {"query": [query]}}
    return f"{think}<tool_call>\n{json.dumps(call)}\n</tool_call>"


def rounds_done(messages: list[dict[str, Any]]) -> int:
    """Tool rounds already answered in a conversation: its ``<tool_response>`` turns."""
    return sum(
        1
        for m in messages
        if m.get("role") in ("user", "tool")
        and isinstance(m.get("content"), str)
        and m["content"].lstrip().startswith(TOOL_RESPONSE)
    )


RESULTS = 5


def padded_results(query: str) -> tuple[str, list[tuple[str, str]]]:
    """The benchmark search tool: text of ``[resp=N]`` tokens, and (id, title) per result.

    Seeded by the query, so each session's results differ (no false prefix-cache hits
    between sessions) while every contender gets the same text.
    """
    match = RESPONSE_SIZE.search(query)
    size = int(match.group(1)) if match else 500
    rng = random.Random(f"results:{query}")
    sources = [
        (f"bench:{rng.getrandbits(48):x}", f"Study {n} on {query[:40]}") for n in range(1, 6)
    ]
    per = size // RESULTS
    parts = [
        f"[{n}] {title} ({sid})\n{words(rng, max(per - 20, 1))}"
        for n, (sid, title) in enumerate(sources, start=1)
    ]
    text = "\n\n".join(parts)
    want = size * CHARS_PER_TOKEN
    text = (text + " " + words(rng, size))[:want] if len(text) < want else text[:want]
    return text, sources


# How long a tool round takes, in simulated seconds (bench/README.md, "Tool latency"): Tongyi
# DeepResearch's rounds are about half web searches (one search API call per query) and half
# page visits (each page fetched through a reader service, one after another).
SEARCH_SECONDS = (1.0, 3.0)
VISIT_SECONDS = (3.0, 12.0)
VISIT_SHARE = 0.5
TIME_SCALE_ENV = "BENCH_TIME_SCALE"  # simulated seconds per wall second, set for every contender
TOOL_LATENCY_ENV = "BENCH_TOOL_LATENCY"  # "0": tools answer at once (the earlier benchmark)


def tool_seconds(query: str) -> float:
    """Simulated seconds the tool call for ``query`` takes: the same for every contender."""
    rng = random.Random(f"latency:{query}")
    low, high = VISIT_SECONDS if rng.random() < VISIT_SHARE else SEARCH_SECONDS
    return rng.uniform(low, high)


def tool_wait(query: str) -> float:
    """Wall seconds to wait for the tool call for ``query`` at this process's time scale."""
    if os.environ.get(TOOL_LATENCY_ENV, "1") == "0":
        return 0.0
    scale = float(os.environ.get(TIME_SCALE_ENV, "0") or 0)
    return tool_seconds(query) / scale if scale > 0 else 0.0
