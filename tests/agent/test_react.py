"""The ReAct loop, driven by a scripted model and hand-made tools."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from deepresearch.agent import ReactAgent
from deepresearch.agent.prompt import STOP_SEQUENCES
from deepresearch.config import AgentTemplate
from deepresearch.errors import BackendError, ToolFailure
from deepresearch.events import (
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    Thinking,
    ToolCallStart,
    ToolError,
    ToolResult,
)
from deepresearch.llm.base import CallContext, NativeToolCall, StartOver, estimate_tokens
from deepresearch.tools.base import Source, Tool, ToolContext, ToolOutput
from tests.support import ScriptedModel

SEARCH_CALL = (
    "<think>I need evidence.</think>\n<tool_call>\n"
    '{"name": "search", "arguments": {"query": ["metformin first line"]}}\n</tool_call>'
)
ANSWER = "<think>Enough.</think>\n<answer>Metformin is first-line [1].</answer>"


class FakeSearch:
    name = "search"
    description = "finds one fixed source"
    parameters: dict[str, Any] = {"type": "object", "properties": {"query": {"type": "array"}}}

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        self.calls.append(arguments)
        source = Source("pubmed:1", "Metformin trial", "https://example.org/1", "Full text.")
        number = context.citations.number(source)
        return ToolOutput(f"[{number}] Metformin trial", "1 sources found", (source,))


class Exploding:
    name = "explode"
    description = "always raises"
    parameters: dict[str, Any] = {"type": "object"}

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        raise RuntimeError("kaboom")


def agent(model: ScriptedModel, *tools: Tool, rounds: int = 10, **generation: Any) -> ReactAgent:
    config = AgentTemplate(max_rounds=rounds).for_request(**generation)
    return ReactAgent("sid-1", model, {t.name: t for t in tools}, config, today=date(2026, 1, 2))


async def run(a: ReactAgent, question: str = "How is diabetes managed?") -> list[Event]:
    return [event async for event in a.run(question)]


async def test_a_run_tells_the_model_its_session_ended_on_every_way_out() -> None:
    answered = ScriptedModel([ANSWER])
    await run(agent(answered))
    assert answered.ended == ["sid-1"]
    cancelled = ScriptedModel([SEARCH_CALL, ANSWER])
    events = agent(cancelled, FakeSearch()).run("q")
    assert (await anext(events)).type == "round_start"
    await events.aclose()  # the client went away mid-round
    assert cancelled.ended == ["sid-1"]


async def test_tool_round_trip_then_cited_answer() -> None:
    model = ScriptedModel([SEARCH_CALL, ANSWER])
    search = FakeSearch()
    events = await run(agent(model, search))
    types = [e.type for e in events]
    assert types[0] == "round_start" and types[-2:] == ["final_answer", "completed"]
    assert "tool_call_start" in types and "tool_result" in types
    assert search.calls == [{"query": ["metformin first line"]}]
    # The tool's output went back as a <tool_response> user message.
    second_call = model.calls[1]
    assert second_call[-1]["role"] == "user"
    assert second_call[-1]["content"].startswith("<tool_response>\n[1] Metformin trial")
    final = next(e for e in events if isinstance(e, FinalAnswer))
    assert final.answer_data.answer == "Metformin is first-line [1]."
    assert [(c.id, c.source_id, c.url) for c in final.answer_data.citations] == [
        ("1", "pubmed:1", "https://example.org/1")
    ]
    assert all(e.session_id == "sid-1" for e in events)


async def test_system_prompt_lists_tools_and_date_and_stop_sequences_are_sent() -> None:
    model = ScriptedModel([ANSWER])
    await run(agent(model, FakeSearch()))
    system = model.calls[0][0]
    assert system["role"] == "system"
    assert '"name": "search"' in system["content"] and "<tools>" in system["content"]
    assert system["content"].endswith("Current date: 2026-01-02")
    assert STOP_SEQUENCES == ("\n<tool_response>", "<tool_response>")


async def test_request_generation_settings_reach_the_model() -> None:
    model = ScriptedModel([ANSWER])
    await run(agent(model, temperature=0.2, max_tokens=99))
    sent = model.settings[0]
    assert (sent.temperature, sent.max_tokens, sent.top_p) == (0.2, 99, 0.95)


async def test_thinking_is_accumulated_with_deltas_and_tags_stripped() -> None:
    model = ScriptedModel([ANSWER], piece=1)
    events = await run(agent(model))
    thinking = [e for e in events if isinstance(e, Thinking)]
    assert thinking and thinking[-1].content == "Enough."
    assert "".join(e.delta for e in thinking) == "Enough."
    assert all("<" not in e.content for e in thinking)


async def test_malformed_call_goes_back_to_the_model_and_the_loop_goes_on() -> None:
    model = ScriptedModel(["<tool_call>{not json</tool_call>", ANSWER])
    events = await run(agent(model, FakeSearch()))
    error = next(e for e in events if isinstance(e, ToolError))
    assert "not valid JSON" in error.content
    assert model.calls[1][-1]["content"].startswith("<tool_response>\nError: the tool call")
    assert events[-1].type == "completed"


async def test_unknown_tool_and_tool_exception_become_tool_errors() -> None:
    unknown = '<tool_call>{"name": "teleport", "arguments": {}}</tool_call>'
    boom = '<tool_call>{"name": "explode", "arguments": {}}</tool_call>'
    model = ScriptedModel([unknown, boom, ANSWER])
    events = await run(agent(model, FakeSearch(), Exploding()))
    errors = [e for e in events if isinstance(e, ToolError)]
    assert [e.tool_name for e in errors] == ["teleport", "explode"]
    assert "no tool named 'teleport'" in errors[0].content
    assert "kaboom" in errors[1].content
    assert events[-1].type == "completed"


async def test_repeated_identical_call_is_pointed_out_to_the_model() -> None:
    model = ScriptedModel([SEARCH_CALL, SEARCH_CALL, ANSWER])
    await run(agent(model, FakeSearch()))
    assert "already made this exact call" not in model.calls[1][-1]["content"]
    assert "already made this exact call" in model.calls[2][-1]["content"]


async def test_round_budget_ends_with_no_answer() -> None:
    model = ScriptedModel([SEARCH_CALL, SEARCH_CALL, SEARCH_CALL])
    events = await run(agent(model, FakeSearch(), rounds=3))
    assert [e.type for e in events].count("round_start") == 3
    assert events[-1].type == "no_answer"


async def test_reply_with_neither_call_nor_answer_gets_a_nudge() -> None:
    model = ScriptedModel(["<think>hmm</think> just musing", ANSWER])
    events = await run(agent(model))
    assert "<answer></answer>" in model.calls[1][-1]["content"]
    assert events[-1].type == "completed"


async def test_backend_failure_is_raised_for_the_runtime_to_end_the_session() -> None:
    model = ScriptedModel([BackendError("backend down")])
    with pytest.raises(BackendError):
        await run(agent(model))


async def test_marker_without_a_source_is_removed_and_reported() -> None:
    model = ScriptedModel([SEARCH_CALL, "<answer>Yes [1]. Also [5].</answer>"])
    events = await run(agent(model, FakeSearch()))
    final = next(e for e in events if isinstance(e, FinalAnswer))
    assert final.answer_data.answer == "Yes [1]. Also."
    assert final.dropped_citations == [5]
    assert [c.id for c in final.answer_data.citations] == ["1"]


async def test_python_code_block_call_is_parsed() -> None:
    class Python:
        name = "PythonInterpreter"
        description = "runs code"
        parameters: dict[str, Any] = {"type": "object"}
        seen: list[str] = []

        async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
            self.seen.append(arguments["code"])
            if "raise" in arguments["code"]:
                raise ToolFailure("bad code")
            return ToolOutput("42", "ran")

    call = (
        '<tool_call>{"name": "PythonInterpreter", "arguments": ""}\n'
        "<code>\nprint(6*7)\n</code>\n</tool_call>"
    )
    python = Python()
    events = await run(agent(ScriptedModel([call, ANSWER]), python))
    assert python.seen == ["print(6*7)"]
    start = next(e for e in events if isinstance(e, ToolCallStart))
    assert start.tool_name == "PythonInterpreter"
    assert any(isinstance(e, ToolResult) and e.result == "42" for e in events)


class WordySearch(FakeSearch):
    """A search whose results fill the context: ``padding`` words of evidence."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        output = await super().call(arguments, context)
        return ToolOutput(output.text + " evidence" * self.padding, output.summary, output.sources)


BIG_CALL = '<tool_call>{"name": "search", "arguments": {"query": ["x"]}}</tool_call>'


async def test_context_overflow_forces_one_last_call_that_answers() -> None:
    model = ScriptedModel([BIG_CALL, ANSWER])
    config = AgentTemplate(context_tokens=8000).for_request(max_tokens=2000)
    events = await run(ReactAgent("sid-1", model, {"search": WordySearch(3000)}, config))
    assert events[-1].type == "completed"
    last_prompt = model.calls[-1]
    assert last_prompt[-1]["content"].startswith("You have now reached the maximum context")
    assert model.settings[-1].max_tokens <= 2000


async def test_context_overflow_without_an_answer_ends_with_no_answer_and_trims_visibly() -> None:
    model = ScriptedModel([BIG_CALL, BIG_CALL])
    config = AgentTemplate(context_tokens=4000).for_request(max_tokens=1000)
    events = await run(ReactAgent("sid-1", model, {"search": WordySearch(6000)}, config))
    assert events[-1].type == "no_answer"
    assert "context budget" in events[-1].content
    final_prompt = model.calls[-1]
    assert any("removed to fit the context" in m["content"] for m in final_prompt)
    assert len(model.calls) == 2  # exactly one last call, no more


async def test_a_reply_restarted_part_way_starts_its_text_afresh() -> None:
    restarted: list[str | NativeToolCall | Exception | StartOver] = [
        "<think>half a thou",
        StartOver("reset"),
        "<think>A whole thought.</think><answer>Done [1].</answer>",
    ]
    events = await run(agent(ScriptedModel([restarted])))  # type: ignore[list-item]
    assert events[-1].type == "completed"
    thoughts = [e for e in events if isinstance(e, Thinking)]
    assert thoughts[-1].content == "A whole thought."
    assert all("half" not in e.content for e in events if isinstance(e, FinalAnswer))


async def test_every_model_call_names_its_session_and_purpose() -> None:
    model = ScriptedModel([SEARCH_CALL, ANSWER])
    config = AgentTemplate(context_tokens=9_000)  # near the budget: tokens are counted
    await run(ReactAgent("sid-1", model, {"search": FakeSearch()}, config))
    assert [(c.session_id, c.purpose) for c in model.contexts] == [("sid-1", "round")] * 2
    assert model.counted and all(c == CallContext("sid-1", "count") for c in model.counted)


async def test_native_function_calling_round_trip() -> None:
    call = NativeToolCall("call_1", "search", '{"query": ["metformin"]}')
    model = ScriptedModel([["Let me look.", call], "Metformin is first-line [1]."])
    config = AgentTemplate(protocol="native")
    search = FakeSearch()
    events = await run(ReactAgent("sid-1", model, {"search": search}, config))
    assert search.calls == [{"query": ["metformin"]}]
    assert model.tools[0] is not None and model.tools[0][0]["function"]["name"] == "search"
    assistant, tool = model.calls[1][-2], model.calls[1][-1]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert tool == {"role": "tool", "content": "[1] Metformin trial", "tool_call_id": "call_1"}
    final = next(e for e in events if isinstance(e, FinalAnswer))
    assert final.answer_data.answer == "Metformin is first-line [1]."
    chunks = [e for e in events if isinstance(e, FinalAnswerChunk)]
    assert chunks and chunks[-1].content == "Metformin is first-line [1]."
    assert "<tools>" not in model.calls[0][0]["content"]


async def test_a_tight_budget_shortens_replies_before_it_ends_the_research() -> None:
    model = ScriptedModel([SEARCH_CALL, ANSWER])
    config = AgentTemplate(context_tokens=8192)  # the default max_tokens is 8192 too
    events = await run(ReactAgent("sid-1", model, {"search": FakeSearch()}, config))
    assert events[-1].type == "completed"
    assert all("maximum context" not in m["content"] for m in model.calls[0])
    assert 1024 <= model.settings[0].max_tokens < 8192


async def test_old_reasoning_is_trimmed_visibly_when_the_last_call_needs_room() -> None:
    long_thought = "<think>" + "pondering " * 3000 + "</think>\n" + SEARCH_CALL
    model = ScriptedModel([long_thought, ANSWER])
    config = AgentTemplate(context_tokens=5000).for_request(max_tokens=1000)
    events = await run(ReactAgent("sid-1", model, {"search": FakeSearch()}, config))
    assert events[-1].type == "completed"
    final_prompt = model.calls[-1]
    assert any("reasoning removed to fit the context" in m["content"] for m in final_prompt)
    assert estimate_tokens(final_prompt) + model.settings[-1].max_tokens <= 5000


async def test_a_question_too_long_for_the_budget_ends_without_a_call() -> None:
    model = ScriptedModel([ANSWER])
    config = AgentTemplate(context_tokens=2048)
    events = await run(ReactAgent("sid-1", model, {}, config), "why? " * 3000)
    assert events[-1].type == "no_answer" and "no longer fits" in events[-1].content
    assert model.calls == []


async def test_a_refused_request_is_not_retried() -> None:
    model = ScriptedModel([BackendError("HTTP 400: too long", retryable=False), ANSWER])
    with pytest.raises(BackendError, match="HTTP 400"):
        await run(agent(model))
    assert len(model.calls) == 1
