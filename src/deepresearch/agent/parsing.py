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


def reasoning(text: str) -> str:
    """What the model thought so far in a reply: before any call or answer, tags stripped."""
    for marker in ("<tool_call>", "<answer>"):
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    return THINK_TAGS.sub("", PARTIAL_TAG.sub("", text)).strip()


def answer_so_far(text: str) -> str | None:
    """The answer being written, or ``None`` before ``<answer>`` appears."""
    start = text.find("<answer>")
    if start == -1:
        return None
    body = text[start + len("<answer>") :]
    end = body.find("</answer>")
    return (body if end == -1 else body[:end]).strip()


def parse_reply(text: str) -> Reply:
    answer = answer_so_far(text)
    if answer is not None:
        return Answer(answer)
    start = text.find("<tool_call>")
    if start == -1:
        return NoAction()
    body = text[start + len("<tool_call>") :]
    end = body.find("</tool_call>")
    body = (body if end == -1 else body[:end]).strip()
    code = CODE_BLOCK.search(body)
    if code is not None:
        # PythonInterpreter: JSON names the tool, the code sits in <code></code>.
        return ToolCall("PythonInterpreter", {"code": code.group(1).strip()})
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return Malformed(f"the tool call is not valid JSON ({exc.msg} at char {exc.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return Malformed('a tool call must be {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return Malformed("the tool call's arguments are not a JSON object")
    if not isinstance(arguments, dict):
        return Malformed("the tool call's arguments must be a JSON object")
    return ToolCall(call["name"], arguments)
