"""The offline evidence mode: the same events and tools, driven without a model.

A deterministic planner turns the question into a few search queries (one tool
call), ranks the sentences of what it found (``ranking.py``), and composes an
extractive digest: the most relevant sentences, each with its citation, plainly
labelled as quotations, not a synthesis.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence

import anyio.to_thread

from deepresearch.agent.citations import cite
from deepresearch.agent.dialects import safe_markdown
from deepresearch.agent.parsing import ToolCall
from deepresearch.agent.ranking import Candidate, Question, select
from deepresearch.agent.tooling import ToolRunner
from deepresearch.events import (
    AnswerGeneration,
    Completed,
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    NoAnswer,
    RoundStart,
    Thinking,
    ToolResult,
)
from deepresearch.tools.base import Source, Tool, ToolContext

PREAMBLE = (
    "**Extractive evidence digest.** No language model is configured on this server, so this "
    "is not a synthesis: these are the sentences from the sources found that best match the "
    "question, quoted as written, each with its source. Read the sources before relying on them."
)


# A source's own reference marks ("...manner.[1][2]") would read as this answer's
# citations and point at the wrong sources; the quote keeps its words, not its marks.
SOURCE_REFERENCE = re.compile(r"\s*\[\d{1,4}(?:\s*[-,\u2013]\s*\d{1,4})*\]")


def _without_references(sentence: str) -> str:
    return SOURCE_REFERENCE.sub("", sentence).strip()


def compose(chosen: Sequence[Candidate], context: ToolContext) -> str | None:
    """The digest in Markdown with ``[n]`` markers, or ``None`` if nothing was chosen."""
    if not chosen:
        return None
    lines = [
        f"- {_without_references(c.sentence)} [{context.citations.number(c.source)}]"
        for c in chosen
    ]
    return PREAMBLE + "\n\n" + "\n".join(lines)


class EvidenceDigestAgent:
    """Searches once with a few query variants and answers with an extractive digest."""

    def __init__(self, session_id: str, tools: Mapping[str, Tool]) -> None:
        self.session_id = session_id
        self._tools = ToolRunner(session_id, tools)
        self._context = ToolContext(session_id)

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        sid = self.session_id
        parsed = Question.parse(question)
        queries = parsed.variants()
        yield RoundStart(session_id=sid, round=1)
        plan = (
            "Offline evidence mode: searching the evidence index for "
            + "; ".join(f"'{q}'" for q in queries)
            + ", then quoting the sentences that best match the question."
        )
        yield Thinking(session_id=sid, round=1, content=plan, delta=plan)
        sources: list[Source] = []
        async for event in self._tools.call(
            ToolCall("search", {"query": queries}), 1, self._context
        ):
            if isinstance(event, ToolResult):
                sources = self._context.citations.sources()
            yield event
        # Cutting and scoring a few hundred sentences is CPU work: off the event loop.
        chosen = await anyio.to_thread.run_sync(select, parsed, sources)
        digest = compose(chosen, self._context)
        if digest is None:
            yield NoAnswer(
                session_id=sid, content="no relevant evidence was found for the question"
            )
            return
        cited = cite(safe_markdown(digest), self._context.citations)
        yield AnswerGeneration(session_id=sid, content="writing the digest")
        yield FinalAnswerChunk(session_id=sid, content=cited.data.answer)
        yield FinalAnswer(session_id=sid, content=cited.data.answer, answer_data=cited.data)
        yield Completed(session_id=sid, content="evidence digest complete")
