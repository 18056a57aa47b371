"""Running the model's tool calls: events, errors fed back, repeats noticed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping

from deepresearch.agent.parsing import ToolCall
from deepresearch.errors import ToolFailure
from deepresearch.events import Event, ToolCallStart, ToolError, ToolResult
from deepresearch.tools.base import Tool, ToolContext

log = logging.getLogger(__name__)

TOOL_TIMEOUT = 120.0
RESULT_DISPLAY_CHARS = 4000


class ToolRunner:
    """Calls tools for one session; ``last`` is the text to feed back to the model."""

    def __init__(self, session_id: str, tools: Mapping[str, Tool]) -> None:
        self.session_id = session_id
        self.tools = list(tools.values())
        self._by_name = dict(tools)
        self.seen: set[str] = set()  # every call made, as keys: a repeat is pointed out
        self.last = ""

    async def call(
        self, call: ToolCall, round_number: int, context: ToolContext
    ) -> AsyncIterator[Event]:
        sid = self.session_id
        yield ToolCallStart(
            session_id=sid,
            round=round_number,
            tool_name=call.name,
            tool_args=call.arguments,
            content=f"{call.name}: {_describe(call.arguments)}",
        )
        key = json.dumps([call.name, call.arguments], sort_keys=True)
        repeated = key in self.seen
        self.seen.add(key)
        tool = self._by_name.get(call.name)
        try:
            if tool is None:
                known = ", ".join(sorted(self._by_name))
                raise ToolFailure(f"there is no tool named {call.name!r}; the tools are: {known}")
            async with asyncio.timeout(TOOL_TIMEOUT):
                output = await tool.call(call.arguments, context)
        except ToolFailure as exc:
            async for event in self._failed(call.name, str(exc), round_number):
                yield event
            return
        except TimeoutError:
            message = f"{call.name} took longer than {TOOL_TIMEOUT:g} s"
            async for event in self._failed(call.name, message, round_number):
                yield event
            return
        except Exception as exc:
            log.exception("[session %s] tool %s raised", sid[:8], call.name)
            message = f"{call.name} failed unexpectedly ({type(exc).__name__}: {exc})"
            async for event in self._failed(call.name, message, round_number):
                yield event
            return
        self.last = output.text
        if repeated:
            self.last = (
                "Note: you already made this exact call earlier; its result is the same. "
                "Try a different query or tool, or answer with what you have.\n\n" + output.text
            )
        yield ToolResult(
            session_id=sid,
            round=round_number,
            tool_name=call.name,
            result=output.text[:RESULT_DISPLAY_CHARS],
            content=output.summary,
        )

    async def reject(self, reason: str, round_number: int) -> AsyncIterator[Event]:
        """A malformed call: tell the model (and the listener) what was wrong."""
        async for event in self._failed("unknown", reason, round_number):
            yield event

    async def _failed(self, name: str, message: str, round_number: int) -> AsyncIterator[Event]:
        self.last = f"Error: {message}"
        yield ToolError(
            session_id=self.session_id, round=round_number, tool_name=name, content=message
        )


def _describe(arguments: Mapping[str, object]) -> str:
    """A short readable rendering of tool arguments (``a | b``)."""
    parts: list[str] = []
    for value in arguments.values():
        if isinstance(value, list):
            parts.extend(str(item) for item in value)
        else:
            parts.append(value if isinstance(value, str) else json.dumps(value))
    return " | ".join(parts)[:300]
