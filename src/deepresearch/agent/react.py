"""The Tongyi DeepResearch ReAct loop: think, call a tool, read, answer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date

from deepresearch.agent.citations import cite
from deepresearch.agent.parsing import (
    Answer,
    Malformed,
    NoAction,
    ToolCall,
    answer_so_far,
    parse_reply,
    reasoning,
)
from deepresearch.agent.prompt import STOP_SEQUENCES, system_prompt, tool_response
from deepresearch.agent.tooling import ToolRunner
from deepresearch.config import AgentTemplate
from deepresearch.events import (
    Completed,
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    NoAnswer,
    RoundStart,
    Thinking,
)
from deepresearch.llm.base import ChatModel, Message
from deepresearch.tools.base import Tool, ToolContext

log = logging.getLogger(__name__)

# At most one streamed event per session this often, so a fast backend cannot
# flood clients; the last piece of a reply is always sent.
STREAM_INTERVAL = 0.05

NUDGE = (
    "Continue: either call one tool inside <tool_call></tool_call>, or give your final "
    "answer inside <answer></answer>."
)


class ReactAgent:
    def __init__(
        self,
        session_id: str,
        model: ChatModel,
        tools: Mapping[str, Tool],
        config: AgentTemplate,
        today: date | None = None,
    ) -> None:
        self.session_id = session_id
        self._model = model
        self._tools = ToolRunner(session_id, tools)
        self._config = config
        self._today = today or date.today()
        self._context = ToolContext(session_id)

    async def run(self, question: str) -> AsyncIterator[Event]:
        sid = self.session_id
        messages: list[Message] = [
            {"role": "system", "content": system_prompt(self._tools.tools, self._today)},
            {"role": "user", "content": question},
        ]
        for round_number in range(1, self._config.max_rounds + 1):
            yield RoundStart(session_id=sid, round=round_number)
            text = ""
            async for event in self._stream_reply(messages, round_number):
                if isinstance(event, str):
                    text = event
                else:
                    yield event
            messages.append({"role": "assistant", "content": text})
            reply = parse_reply(text)
            if isinstance(reply, Answer):
                cited = cite(reply.text, self._context.citations)
                yield FinalAnswer(
                    session_id=sid,
                    content=cited.data.answer,
                    answer_data=cited.data,
                    dropped_citations=cited.dropped,
                )
                yield Completed(session_id=sid, content="research complete")
                return
            if isinstance(reply, ToolCall):
                async for event in self._tools.call(reply, round_number, self._context):
                    yield event
                messages.append({"role": "user", "content": tool_response(self._tools.last)})
            elif isinstance(reply, Malformed):
                async for event in self._tools.reject(reply.reason, round_number):
                    yield event
                messages.append({"role": "user", "content": tool_response(self._tools.last)})
            else:
                assert isinstance(reply, NoAction)
                messages.append({"role": "user", "content": NUDGE})
        yield NoAnswer(
            session_id=sid,
            content=f"no answer after {self._config.max_rounds} rounds",
        )

    async def _stream_reply(
        self, messages: Sequence[Message], round_number: int
    ) -> AsyncIterator[Event | str]:
        """Stream one model reply as coalesced events; the last item is the whole text."""
        sid = self.session_id
        text = ""
        shown_reasoning = ""
        shown_answer: str | None = None
        last_sent = 0.0
        stream = self._model.stream(messages, self._config.generation, STOP_SEQUENCES)
        pieces = aiter(stream)
        finished = False
        while not finished:
            try:
                text += await anext(pieces)
            except StopAsyncIteration:
                finished = True
            now = time.monotonic()
            if not finished and now - last_sent < STREAM_INTERVAL:
                continue
            last_sent = now
            thought = reasoning(text)
            if thought != shown_reasoning:
                grew = thought.startswith(shown_reasoning)
                delta = thought[len(shown_reasoning) :] if grew else thought
                shown_reasoning = thought
                yield Thinking(session_id=sid, round=round_number, content=thought, delta=delta)
            answer = answer_so_far(text)
            if answer is not None and answer != shown_answer:
                shown_answer = answer
                yield FinalAnswerChunk(session_id=sid, content=answer)
        yield text
