"""How the agent talks to a model: the Tongyi text protocol, or native function calls.

Both turn the model's reply into the same ``Reply`` values and tool results into
the messages their protocol expects; the loop in ``react.py`` is shared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date
from typing import Any, Protocol

from deepresearch.agent.parsing import (
    Answer,
    Malformed,
    NoAction,
    ToolCall,
    answer_so_far,
    parse_reply,
    reasoning,
)
from deepresearch.agent.prompt import (
    STOP_SEQUENCES,
    native_system_prompt,
    system_prompt,
    tool_response,
)
from deepresearch.llm.base import Message, NativeToolCall
from deepresearch.tools.base import Tool

Reply = Answer | tuple[ToolCall | Malformed, ...] | NoAction

# Any spelling of a protocol tag (any case, spaces or attributes inside the brackets)
# and chat-template tokens (<|im_end|>): in text a tool brings back, each could end
# the tool response early or fake a call or an answer.
PROTOCOL_TAG = re.compile(
    r"<(?=\s*/?\s*(?:tool_response|tool_call|answer|think|code|tools)\b)|<(?=\s*\|)",
    re.IGNORECASE,
)
# The start of raw HTML in Markdown: a tag, a closing tag, a comment or a declaration.
HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
FENCE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)


def escape_tool_text(text: str) -> str:
    """Tool output as inert text: every protocol tag's ``<`` becomes ``&lt;``."""
    return PROTOCOL_TAG.sub("&lt;", text)


def safe_markdown(text: str) -> str:
    """An answer safe to render as Markdown: raw HTML (from a source the model quoted,
    or the model itself) shows as text; code spans and blocks are left as written."""
    pieces, at = [], 0
    for code in FENCE.finditer(text):
        pieces.append(HTML_START.sub("&lt;", text[at : code.start()]))
        pieces.append(code.group())
        at = code.end()
    pieces.append(HTML_START.sub("&lt;", text[at:]))
    return "".join(pieces)


class Dialect(Protocol):
    stop: Sequence[str]

    def system_prompt(self, tools: Sequence[Tool], today: date) -> str: ...

    def tool_schemas(self, tools: Sequence[Tool]) -> list[dict[str, Any]] | None: ...

    def parse(self, text: str, calls: Sequence[NativeToolCall]) -> Reply: ...

    def assistant_message(self, text: str, calls: Sequence[NativeToolCall]) -> Message: ...

    def tool_message(self, call: ToolCall | Malformed, output: str) -> Message: ...


class TongyiDialect:
    """``<tool_call>`` and ``<answer>`` in the text; results as ``<tool_response>``."""

    stop: Sequence[str] = STOP_SEQUENCES

    def system_prompt(self, tools: Sequence[Tool], today: date) -> str:
        return system_prompt(tools, today)

    def tool_schemas(self, tools: Sequence[Tool]) -> list[dict[str, Any]] | None:
        return None

    def parse(self, text: str, calls: Sequence[NativeToolCall]) -> Reply:
        reply = parse_reply(text)
        if isinstance(reply, ToolCall | Malformed):
            return (reply,)
        return reply

    def assistant_message(self, text: str, calls: Sequence[NativeToolCall]) -> Message:
        return {"role": "assistant", "content": text}

    def tool_message(self, call: ToolCall | Malformed, output: str) -> Message:
        return {"role": "user", "content": tool_response(escape_tool_text(output))}


class NativeDialect:
    """The chat API's ``tools`` field; the answer is a reply without tool calls."""

    stop: Sequence[str] = ()

    def system_prompt(self, tools: Sequence[Tool], today: date) -> str:
        return native_system_prompt(today)

    def tool_schemas(self, tools: Sequence[Tool]) -> list[dict[str, Any]] | None:
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in tools
        ]

    def parse(self, text: str, calls: Sequence[NativeToolCall]) -> Reply:
        if calls:
            return tuple(_native_call(call) for call in calls)
        answer = answer_so_far(text)
        if answer is None:
            answer = reasoning(text) if "</think>" not in text else text.split("</think>")[-1]
        answer = answer.strip()
        return Answer(answer) if answer else NoAction()

    def assistant_message(self, text: str, calls: Sequence[NativeToolCall]) -> Message:
        message: Message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in calls
            ]
        return message

    def tool_message(self, call: ToolCall | Malformed, output: str) -> Message:
        return {
            "role": "tool",
            "content": escape_tool_text(output),
            "tool_call_id": call.call_id or "",
        }


def _native_call(call: NativeToolCall) -> ToolCall | Malformed:
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return Malformed(f"the arguments of {call.name} are not valid JSON ({exc.msg})", call.id)
    if not isinstance(arguments, dict):
        return Malformed(f"the arguments of {call.name} must be a JSON object", call.id)
    return ToolCall(call.name, arguments, call.id)


def dialect_for(protocol: str) -> Dialect:
    return NativeDialect() if protocol == "native" else TongyiDialect()
