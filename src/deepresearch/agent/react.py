"""The Tongyi DeepResearch ReAct loop: think, call a tool, read, answer."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import cast

from deepresearch.agent.base import AgentState, RoundHook
from deepresearch.agent.citations import cite, renumber_partial
from deepresearch.agent.conversation import Exchange, framed_question
from deepresearch.agent.dialects import Dialect, dialect_for, safe_markdown
from deepresearch.agent.parsing import Answer, Malformed, NoAction, answer_so_far, reasoning
from deepresearch.agent.prompt import FINAL_CALL
from deepresearch.agent.tooling import ToolRunner
from deepresearch.config import AgentTemplate, GenerationSettings
from deepresearch.events import (
    AnswerGeneration,
    Completed,
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    NoAnswer,
    RoundStart,
    Thinking,
)
from deepresearch.llm.base import (
    CallContext,
    ChatModel,
    Message,
    NativeToolCall,
    Piece,
    StartOver,
    estimate_tokens,
)
from deepresearch.tools.base import Source, Tool, ToolContext

log = logging.getLogger(__name__)

# At most one streamed event per session this often, so a fast backend cannot
# flood clients; the last piece of a reply is always sent.
STREAM_INTERVAL = 0.05
# Room kept for the final-call instruction itself, in tokens.
FINAL_CALL_RESERVE = 128
MIN_FINAL_REPLY = 256
MIN_RESEARCH_REPLY = 1024  # less room than this, and it is time to answer
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
ESTIMATE_SLACK = 4

NUDGE = (
    "Continue: either call one tool inside <tool_call></tool_call>, or give your final "
    "answer inside <answer></answer>."
)
TRIMMED = "[this tool response was removed to fit the context; its sources stay citable]"
ANSWER_GENERATION = "writing the answer"
TRIMMED_THOUGHT = "<think>[reasoning removed to fit the context]</think>"


def _shortened(message: Message) -> str:
    """What an old message becomes when the context must shrink."""
    if message["role"] in ("user", "tool"):
        return TRIMMED
    if message["role"] == "assistant":
        return THINK_BLOCK.sub(TRIMMED_THOUGHT, message["content"])
    return message["content"]


@dataclass
class _Reply:
    text: str = ""
    calls: list[NativeToolCall] = field(default_factory=list)
    shown_answer: str | None = None  # the last final_answer_chunk streamed


class ReactAgent:
    def __init__(
        self,
        session_id: str,
        model: ChatModel,
        tools: Mapping[str, Tool],
        config: AgentTemplate,
        today: date | None = None,
        history: tuple[Exchange, ...] = (),
        *,
        on_round: RoundHook | None = None,
        checkpoint: AgentState | None = None,
    ) -> None:
        """``on_round``: awaited with the agent's state after each completed round (the
        runtime keeps it as the checkpoint); ``checkpoint``: such a state to go on
        from, at the round after it (no completed round's model call is made again)."""
        self.session_id = session_id
        self._history = history  # the conversation's earlier turns
        self._answer_announced = False  # answer_generation is sent once
        self._model = model
        self._tools = ToolRunner(session_id, tools)
        self._config = config
        self._dialect: Dialect = dialect_for(config.protocol)
        self._today = today or date.today()
        self._context = ToolContext(session_id)
        self._round_call = CallContext(session_id, "round")
        self._count_call = CallContext(session_id, "count")
        self._on_round = on_round
        self._checkpoint = checkpoint
        self.counters = {"model_calls": 0, "tool_calls": 0}
        if checkpoint is not None:
            self._restore(checkpoint)

    def _state(self, round_number: int, messages: list[Message]) -> AgentState:
        """Everything a resumed run needs to go on after ``round_number``, as JSON."""
        return AgentState(
            round=round_number,
            messages=[dict(message) for message in messages],
            counters=dict(self.counters),
            extra={
                # In number order: a resumed run numbers new sources after them.
                "sources": [asdict(source) for source in self._context.citations.sources()],
                "calls": sorted(self._tools.seen),
                "answer_announced": self._answer_announced,
                "generation": self._config.generation.model_dump(mode="json"),
            },
        )

    def _restore(self, state: AgentState) -> None:
        extra = state.extra
        for source in extra.get("sources", []):
            self._context.citations.number(Source(**source))
        self._tools.seen.update(extra.get("calls", []))
        self._answer_announced = bool(extra.get("answer_announced", False))
        if "generation" in extra:  # the request's own settings, not the server's defaults
            generation = GenerationSettings.model_validate(extra["generation"])
            self._config = self._config.model_copy(update={"generation": generation})
        self.counters.update(state.counters)

    async def _round_done(self, round_number: int, messages: list[Message]) -> None:
        if self._on_round is not None:
            await self._on_round(self._state(round_number, messages))

    def _first_messages(self, question: str) -> list[Message]:
        dialect = self._dialect
        return [
            {"role": "system", "content": dialect.system_prompt(self._tools.tools, self._today)},
            {
                "role": "user",
                "content": framed_question(question, self._history, self._config.context_tokens),
            },
        ]

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        try:
            async with aclosing(self._rounds(question)) as events:
                async for event in events:
                    yield event
        finally:
            # On every way out (an answer, a cancel, a hand-back): its seat at the
            # backend goes to the next session at once.
            self._model.end_session(self.session_id)

    async def _rounds(self, question: str) -> AsyncGenerator[Event, None]:
        sid = self.session_id
        dialect = self._dialect
        first_round = 1
        if self._checkpoint is not None:
            messages = [cast(Message, dict(m)) for m in self._checkpoint.messages]
            first_round = self._checkpoint.round + 1
        else:
            messages = self._first_messages(question)
        for round_number in range(first_round, self._config.max_rounds + 1):
            yield RoundStart(session_id=sid, round=round_number)
            settings, last_call = await self._fit(messages)
            if settings is None:
                yield NoAnswer(
                    session_id=sid,
                    content="the context budget was spent: the conversation no longer fits",
                )
                return
            reply = _Reply()
            self.counters["model_calls"] += 1
            async for event in self._stream_reply(messages, settings, round_number, reply):
                yield event
            messages.append(dialect.assistant_message(reply.text, reply.calls))
            parsed = dialect.parse(reply.text, reply.calls)
            if isinstance(parsed, Answer):
                cited = cite(safe_markdown(parsed.text), self._context.citations)
                if reply.shown_answer != parsed.text:
                    # Native replies carry no <answer> tag to stream by: send it whole.
                    if not self._answer_announced:
                        self._answer_announced = True
                        yield AnswerGeneration(session_id=sid, content=ANSWER_GENERATION)
                    yield FinalAnswerChunk(session_id=sid, content=cited.data.answer)
                yield FinalAnswer(
                    session_id=sid,
                    content=cited.data.answer,
                    answer_data=cited.data,
                    dropped_citations=cited.dropped,
                )
                yield Completed(session_id=sid, content="research complete")
                return
            if last_call:
                yield NoAnswer(
                    session_id=sid,
                    content="the context budget was spent and the model gave no final answer",
                )
                return
            if isinstance(parsed, NoAction):
                messages.append({"role": "user", "content": NUDGE})
                await self._round_done(round_number, messages)
                continue
            for call in parsed:
                if isinstance(call, Malformed):
                    events = self._tools.reject(call.reason, round_number)
                else:
                    self.counters["tool_calls"] += 1
                    events = self._tools.call(call, round_number, self._context)
                async for event in events:
                    yield event
                messages.append(dialect.tool_message(call, self._tools.last))
            await self._round_done(round_number, messages)
        yield NoAnswer(session_id=sid, content=f"no answer after {self._config.max_rounds} rounds")

    async def _fit(self, messages: list[Message]) -> tuple[GenerationSettings | None, bool]:
        """The settings for the next call, and whether it must be the last one.

        Near the context budget a reply is given only the room left; when that
        is too little to research on, the model is told to answer now. If even
        that does not fit, old tool responses and old reasoning are replaced by a
        visible marker (never cut silently) until it does; ``None`` when nothing
        can make it fit (the run ends with ``no_answer``, without the call).
        """
        budget = self._config.context_tokens
        settings = self._config.generation
        # The estimate can be off by ~4x (CJK text is ~1 character a token), so only
        # a prompt that could be near the budget is worth a tokenizer round trip.
        if estimate_tokens(messages) * ESTIMATE_SLACK + settings.max_tokens <= budget:
            return settings, False
        room = budget - await self._model.count_tokens(messages, call=self._count_call)
        if room >= settings.max_tokens:
            return settings, False
        if room >= MIN_RESEARCH_REPLY:
            return settings.model_copy(update={"max_tokens": room}), False
        messages.append({"role": "user", "content": FINAL_CALL})
        used = await self._model.count_tokens(messages, call=self._count_call)
        # Oldest first; never the system prompt, the question, or the instruction itself.
        for message in messages[2:-1]:
            if budget - used - FINAL_CALL_RESERVE >= MIN_FINAL_REPLY:
                break
            shorter = _shortened(message)
            if shorter != message["content"]:
                message["content"] = shorter
                used = await self._model.count_tokens(messages, call=self._count_call)
        room = budget - used - FINAL_CALL_RESERVE
        if room < MIN_FINAL_REPLY:
            return None, True
        return settings.model_copy(update={"max_tokens": min(settings.max_tokens, room)}), True

    async def _stream_reply(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        round_number: int,
        reply: _Reply,
    ) -> AsyncIterator[Event]:
        """Stream one model reply as coalesced events, filling ``reply``.

        The model stream is closed on every way out, cancellation included, so the
        backend stops generating for nobody at once.
        """
        async with aclosing(
            self._model.stream(
                messages,
                settings,
                self._dialect.stop,
                call=self._round_call,
                tools=self._dialect.tool_schemas(self._tools.tools),
            )
        ) as stream:
            async for event in self._coalesce(stream, round_number, reply):
                yield event

    async def _coalesce(
        self,
        stream: AsyncGenerator[Piece, None],
        round_number: int,
        reply: _Reply,
    ) -> AsyncIterator[Event]:
        sid = self.session_id
        shown_reasoning = ""
        last_sent = 0.0
        pieces = aiter(stream)
        finished = False
        while not finished:
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                finished = True
            else:
                if isinstance(piece, StartOver):
                    # The call failed part-way and is being asked again: what was
                    # shown is void; the next events start the round's text afresh.
                    reply.text, reply.calls, reply.shown_answer = "", [], None
                    shown_reasoning = ""
                    continue
                if isinstance(piece, NativeToolCall):
                    reply.calls.append(piece)
                    continue
                reply.text += piece
            now = time.monotonic()
            if not finished and now - last_sent < STREAM_INTERVAL:
                continue
            last_sent = now
            thought = reasoning(reply.text)
            if thought != shown_reasoning:
                grew = thought.startswith(shown_reasoning)
                delta = thought[len(shown_reasoning) :] if grew else thought
                shown_reasoning = thought
                yield Thinking(session_id=sid, round=round_number, content=thought, delta=delta)
            answer = answer_so_far(reply.text)
            if answer is not None and answer != reply.shown_answer:
                if not self._answer_announced:
                    # Once per run: a reply asked again does not announce it again.
                    self._answer_announced = True
                    yield AnswerGeneration(session_id=sid, content=ANSWER_GENERATION)
                reply.shown_answer = answer
                # Numbered as the final answer will be: 1..n in order of first use.
                shown = renumber_partial(safe_markdown(answer), self._context.citations)
                yield FinalAnswerChunk(session_id=sid, content=shown)
