"""Reading model replies: the action is what follows the reasoning."""

from __future__ import annotations

from deepresearch.agent.parsing import (
    Answer,
    Malformed,
    NoAction,
    ToolCall,
    answer_so_far,
    parse_reply,
    reasoning,
)

CALL = '<tool_call>{"name": "search", "arguments": {"query": ["asthma"]}}</tool_call>'


def test_answer_tags_mentioned_while_thinking_are_not_the_answer() -> None:
    reply = f"<think>Later I will write the <answer> tag; not yet.</think>\n{CALL}"
    assert parse_reply(reply) == ToolCall("search", {"query": ["asthma"]})
    assert reasoning(reply) == "Later I will write the <answer> tag; not yet."
    assert answer_so_far(reply) is None


def test_an_unclosed_think_is_all_reasoning() -> None:
    reply = "<think>format is <answer>x</answer> and " + CALL
    assert parse_reply(reply) == NoAction()
    assert answer_so_far(reply) is None


def test_an_answer_needs_both_tags_and_some_text() -> None:
    assert parse_reply("<think>ok</think><answer>Use ICS [1].</answer>") == Answer("Use ICS [1].")
    assert parse_reply("<think>ok</think><answer>However in patients with") == NoAction()
    assert parse_reply("<think>ok</think><answer>  </answer>") == NoAction()


def test_the_streamed_answer_never_shows_a_half_closing_tag() -> None:
    assert answer_so_far("<think>ok</think><answer>Use ICS.</ans") == "Use ICS."
    assert answer_so_far("<think>ok</think><answer>Use ICS.<") == "Use ICS."


def test_the_first_action_after_thinking_wins() -> None:
    reply = f"<think>t</think>{CALL}<answer>premature</answer>"
    assert isinstance(parse_reply(reply), ToolCall)


def test_code_in_another_tool_s_arguments_is_not_python() -> None:
    body = '{"name": "search", "arguments": {"query": ["html <code> element a11y"]}}'
    assert parse_reply(f"<tool_call>{body}</tool_call>") == ToolCall(
        "search", {"query": ["html <code> element a11y"]}
    )


def test_python_calls_in_upstream_shape() -> None:
    reply = (
        '<tool_call>{"name": "PythonInterpreter", "arguments": ""}\n'
        "<code>\nprint(1 + 1)\n</code>\n</tool_call>"
    )
    assert parse_reply(reply) == ToolCall("PythonInterpreter", {"code": "print(1 + 1)"})
    loose = "<tool_call>PythonInterpreter\n<code>print(2)</code></tool_call>"
    assert parse_reply(loose) == ToolCall("PythonInterpreter", {"code": "print(2)"})


def test_nested_json_and_malformed_calls() -> None:
    nested = '{"name": "visit", "arguments": {"url": ["u"], "goal": "a {b} c"}}'
    assert parse_reply(f"<tool_call>{nested}</tool_call>") == ToolCall(
        "visit", {"url": ["u"], "goal": "a {b} c"}
    )
    assert isinstance(parse_reply("<tool_call>{nope</tool_call>"), Malformed)
    assert isinstance(parse_reply('<tool_call>{"arguments": {}}</tool_call>'), Malformed)
