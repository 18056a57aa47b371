"""Reading the model's replies: reasoning, one tool call, or the answer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

THINK_TAGS = re.compile(r"</?think>")
PARTIAL_TAG = re.compile(r"<[/a-z_]*$")  # a tag still arriving, e.g. "<tool_c"
CODE_BLOCK = re.compile(r"<code>(.*?)(?:</code>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    call_id: str | None = None  # native function calling: the id the result must name


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Malformed:
    """A tool call the model got wrong; the reason goes back to it."""

    reason: str
    call_id: str | None = None


@dataclass(frozen=True)
class NoAction:
    """Neither a tool call nor an answer."""


Reply = ToolCall | Answer | Malformed | NoAction


ACTIONS = ("<tool_call>", "<answer>")
PARTIAL_END = re.compile(r"<(/(a(n(s(w(er?)?)?)?)?)?)?$")  # "</answer>" still arriving


def _action_start(text: str) -> int:
    """Where the reply's action (a call or the answer) begins, or -1.

    Only after the reasoning: a model may well write "<answer>" inside <think>
    while planning, and a reply whose <think> never closed is all reasoning.
    """
    close = text.find("</think>")
    if close == -1 and "<think>" in text:
        return -1
    after = 0 if close == -1 else close + len("</think>")
    found = [at for marker in ACTIONS if (at := text.find(marker, after)) != -1]
    return min(found, default=-1)


def reasoning(text: str) -> str:
    """What the model thought so far in a reply: before any call or answer, tags stripped."""
    start = _action_start(text)
    head = text if start == -1 else text[:start]
    return THINK_TAGS.sub("", PARTIAL_TAG.sub("", head)).strip()


def answer_so_far(text: str) -> str | None:
    """The answer being written, or ``None`` when the reply's action is not an answer."""
    start = _action_start(text)
    if start == -1 or not text.startswith("<answer>", start):
        return None
    body = text[start + len("<answer>") :]
    end = body.find("</answer>")
    return (PARTIAL_END.sub("", body) if end == -1 else body[:end]).strip()


def parse_reply(text: str) -> Reply:
    start = _action_start(text)
    if start == -1:
        return NoAction()
    if text.startswith("<answer>", start):
        answer = answer_so_far(text)
        # Upstream's rule: both tags. An answer cut off (by max_tokens) is not final,
        # and neither is an empty one.
        if answer and "</answer>" in text[start:]:
            return Answer(answer)
        return NoAction()
    body = text[start + len("<tool_call>") :]
    end = body.find("</tool_call>")
    return _tool_call((body if end == -1 else body[:end]).strip())


def _tool_call(body: str) -> Reply:
    code = CODE_BLOCK.search(body)
    try:
        # raw_decode: the JSON object first; text after it (such as a <code> block) is allowed.
        call, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        if code is not None and "python" in body.lower():
            # Upstream's PythonInterpreter shape need not be valid JSON around the code.
            return ToolCall("PythonInterpreter", {"code": code.group(1).strip()})
        return Malformed(f"the tool call is not valid JSON ({exc.msg} at char {exc.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return Malformed('a tool call must be {"name": ..., "arguments": {...}}')
    if call["name"] == "PythonInterpreter" and code is not None:
        return ToolCall("PythonInterpreter", {"code": code.group(1).strip()})
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return Malformed("the tool call's arguments are not a JSON object")
    if not isinstance(arguments, dict):
        return Malformed("the tool call's arguments must be a JSON object")
    return ToolCall(call["name"], arguments)
