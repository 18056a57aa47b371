"""The offline evidence mode: the same events and tools, driven without a model.

The question goes to the search tool as asked: the search understands it (its
focus and intent, ``search/understanding.py``) and returns only passages that
answer it, best first, or none. The digest quotes the best sentences of the first
few (``ranking.py``), grouped by source, plainly labelled as quotations, not a
synthesis. When the index holds nothing that answers the question it says so,
with no citations.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence

import anyio.to_thread

from deepresearch.agent.citations import cite
from deepresearch.agent.dialects import safe_markdown
from deepresearch.agent.parsing import ToolCall
from deepresearch.agent.ranking import Point, select
from deepresearch.agent.tooling import ToolRunner
from deepresearch.events import (
    AnswerGeneration,
    Completed,
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    RoundStart,
    Thinking,
    ToolResult,
)
from deepresearch.search.understanding import understand
from deepresearch.search.vocabulary import Vocabulary
from deepresearch.tools.base import Source, Tool, ToolContext

PREAMBLE = (
    "**Extractive evidence digest.** No language model is configured on this server, so this "
    "is not a synthesis: these are the sentences from the sources found that best answer the "
    "question, quoted as written, grouped by source. Read the sources before relying on them."
)
UNQUOTED = (
    "**Extractive evidence digest.** No language model is configured on this server. The "
    "sources found for this question have no sentence that can be quoted as an answer (they "
    "are mostly lists of further resources); they are listed here to be read."
)
MAX_LISTED = 5  # sources named in a digest, quoted or not
NOTHING_FOUND = (
    "**No evidence found.** The evidence index on this server holds nothing that answers "
    "this question, so there is nothing to quote. It covers consumer-health pages from the "
    "NIH and PubMed abstracts; a question on another subject, or on a topic they do not "
    "cover, finds nothing here."
)


# A source's own reference marks ("...manner.[1][2]") would read as this answer's
# citations and point at the wrong sources; the quote keeps its words, not its marks.
SOURCE_REFERENCE = re.compile(r"\s*\[\d{1,4}(?:\s*[-,\u2013]\s*\d{1,4})*\]")


def _without_references(sentence: str) -> str:
    return SOURCE_REFERENCE.sub("", sentence).strip()


def compose(points: Sequence[Point], sources: Sequence[Source], context: ToolContext) -> str:
    """The digest in Markdown, in the search's order of relevance: the quotes grouped by
    the page they are from, each with the ``[n]`` of its passage; sources found for the
    question with no sentence worth quoting (lists of links, mostly) are named where
    they rank: before the quotes when they rank above them, else after."""
    if not sources:
        return NOTHING_FOUND
    quoted = {p.source.source_id for p in points}
    listed = [s for s in sources if s.source_id not in quoted][: max(0, MAX_LISTED - len(quoted))]
    first = next((i for i, s in enumerate(sources) if s.source_id in quoted), len(sources))
    ahead = [s for s in listed if sources.index(s) < first]
    behind = [s for s in listed if s not in ahead]
    parts = [PREAMBLE if points else UNQUOTED]
    if ahead and points:
        parts.append(
            f"Best matches, with nothing to quote (lists of resources): {_names(ahead, context)}."
        )
    elif ahead:
        parts.append(f"Found for this question: {_names(ahead, context)}.")
    pages: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        pages.setdefault((point.source.title, point.source.url), []).append(point)
    for (title, _), group in pages.items():
        lines = [f"**{_plain(title)}**"]
        lines.extend(
            f"- {_without_references(p.sentence)} [{context.citations.number(p.source)}]"
            for p in group
        )
        parts.append("\n".join(lines))
    if behind:
        parts.append(f"Also found for this question, not quoted: {_names(behind, context)}.")
    return "\n\n".join(parts)


def _names(sources: Sequence[Source], context: ToolContext) -> str:
    return "; ".join(f"{_plain(s.title)} [{context.citations.number(s)}]" for s in sources)


def _plain(title: str) -> str:
    return title.replace("*", "").replace("[", "(").replace("]", ")").strip()


class EvidenceDigestAgent:
    """Searches once with the question and answers with an extractive digest.

    It keeps no checkpoints: it has one round and calls no model, so a session
    interrupted mid-way simply runs again when it resumes (same search, same
    numbering, same answer).
    """

    def __init__(self, session_id: str, tools: Mapping[str, Tool]) -> None:
        self.session_id = session_id
        self._tools = ToolRunner(session_id, tools)
        self._context = ToolContext(session_id)

    async def run(self, question: str) -> AsyncGenerator[Event, None]:
        sid = self.session_id
        # The intent and the question's words; the search itself knows the vocabulary.
        understood = understand(question, Vocabulary())
        yield RoundStart(session_id=sid, round=1)
        plan = (
            f"Offline evidence mode: searching the evidence index for '{question.strip()}'"
            + (
                f" (asking about: {', '.join(understood.intents[:1])})"
                if understood.intents
                else ""
            )
            + ", then quoting the sentences that best answer it."
        )
        yield Thinking(session_id=sid, round=1, content=plan, delta=plan)
        sources: list[Source] = []
        async for event in self._tools.call(
            ToolCall("search", {"query": [question.strip()]}), 1, self._context
        ):
            if isinstance(event, ToolResult):
                sources = self._context.citations.sources()
            yield event
        # Cutting and scoring sentences is CPU work: off the event loop.
        points = await anyio.to_thread.run_sync(select, understood, sources)
        # ``cite`` numbers the sources 1..n in the order the digest names them.
        digest = compose(points, sources, self._context)
        cited = cite(safe_markdown(digest), self._context.citations)
        yield AnswerGeneration(session_id=sid, content="writing the digest")
        yield FinalAnswerChunk(session_id=sid, content=cited.data.answer)
        yield FinalAnswer(session_id=sid, content=cited.data.answer, answer_data=cited.data)
        yield Completed(
            session_id=sid,
            content="evidence digest complete" if sources else "no evidence found for the question",
        )
