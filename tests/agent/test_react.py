"""The ReAct loop, driven by a scripted model and hand-made tools."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from deepresearch.agent import ReactAgent
from deepresearch.agent.prompt import STOP_SEQUENCES
from deepresearch.config import AgentTemplate
from deepresearch.errors import BackendError, ToolFailure
from deepresearch.events import Event, FinalAnswer, Thinking, ToolCallStart, ToolError, ToolResult
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
    model = ScriptedModel([SEARCH_CALL, "<answer>Yes [1]. Also [7].</answer>"])
    events = await run(agent(model, FakeSearch()))
    final = next(e for e in events if isinstance(e, FinalAnswer))
    assert final.answer_data.answer == "Yes [1]. Also."
    assert final.dropped_citations == [7]
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
