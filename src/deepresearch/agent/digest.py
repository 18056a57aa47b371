"""The offline evidence mode: the same events and tools, driven without a model.

A deterministic planner searches for the question, ranks the sentences of what
it found, and composes an extractive digest: the most relevant sentences, each
with its citation, plainly labelled as quotations, not a synthesis.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from deepresearch.agent.citations import cite
from deepresearch.agent.parsing import ToolCall
from deepresearch.agent.tooling import ToolRunner
from deepresearch.events import (
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

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])|\n+")
SECTION_LABEL = re.compile(r"^[A-Z][A-Za-z /&-]{0,40}:\s+")
WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "should",
        "than",
        "that",
        "the",
        "their",
        "there",
        "these",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "which",
        "who",
        "why",
        "will",
        "with",
        "treated",
        "treat",
        "managed",
        "manage",
    ]
)
DIGEST_SENTENCES = 6
PER_SOURCE = 2
MIN_WORDS = 6

PREAMBLE = (
    "**Extractive evidence digest.** No language model is configured on this server, so this "
    "is not a synthesis: these are the sentences from the sources found that best match the "
    "question, quoted as written, each with its source. Read the sources before relying on them."
)


def _terms(text: str) -> set[str]:
    # A crude stem (the first six letters) lets "treatment" match "treating".
    return {word[:6] for word in WORD.findall(text.lower()) if word not in STOPWORDS}


@dataclass(frozen=True)
class _Candidate:
    score: float
    source_rank: int
    sentence: str
    source: Source


def rank_sentences(question: str, sources: list[Source]) -> list[_Candidate]:
    wanted = _terms(question)
    if not wanted:
        return []
    candidates = []
    for rank, source in enumerate(sources):
        for raw in SENTENCE_END.split(source.text):
            conclusion = raw.lower().startswith(("conclusion", "conclusions"))
            sentence = SECTION_LABEL.sub("", raw.strip(" -\t"))
            words = WORD.findall(sentence.lower())
            if len(words) < MIN_WORDS:
                continue
            overlap = len(wanted & _terms(sentence))
            if overlap == 0:
                continue
            score = overlap / len(wanted) + 0.15 * conclusion + 0.3 / (1 + rank)
            score /= math.log2(2 + len(words) / 25)  # favour sentences that say it briefly
            candidates.append(_Candidate(score, rank, sentence, source))
    candidates.sort(key=lambda c: (-c.score, c.source_rank))
    return candidates


def compose(question: str, sources: list[Source], context: ToolContext) -> str | None:
    """The digest in Markdown with ``[n]`` markers, or ``None`` if nothing matched."""
    chosen: list[_Candidate] = []
    per_source: dict[str, int] = {}
    for candidate in rank_sentences(question, sources):
        taken = per_source.get(candidate.source.source_id, 0)
        if taken >= PER_SOURCE or any(c.sentence == candidate.sentence for c in chosen):
            continue
        per_source[candidate.source.source_id] = taken + 1
        chosen.append(candidate)
        if len(chosen) == DIGEST_SENTENCES:
            break
    if not chosen:
        return None
    lines = [f"- {c.sentence} [{context.citations.number(c.source)}]" for c in chosen]
    return PREAMBLE + "\n\n" + "\n".join(lines)


class EvidenceDigestAgent:
    """Searches once per query variant and answers with an extractive digest."""

    def __init__(self, session_id: str, tools: Mapping[str, Tool]) -> None:
        self.session_id = session_id
        self._tools = ToolRunner(session_id, tools)
        self._context = ToolContext(session_id)

    async def run(self, question: str) -> AsyncIterator[Event]:
        sid = self.session_id
        yield RoundStart(session_id=sid, round=1)
        plan = "Offline evidence mode: searching the evidence index for the question."
        yield Thinking(session_id=sid, round=1, content=plan, delta=plan)
        sources: list[Source] = []
        async for event in self._tools.call(
            ToolCall("search", {"query": [question]}), 1, self._context
        ):
            if isinstance(event, ToolResult):
                sources = self._context.citations.sources()
            yield event
        digest = compose(question, sources, self._context)
        if digest is None:
            yield NoAnswer(
                session_id=sid, content="no relevant evidence was found for the question"
            )
            return
        cited = cite(digest, self._context.citations)
        yield FinalAnswerChunk(session_id=sid, content=cited.data.answer)
        yield FinalAnswer(session_id=sid, content=cited.data.answer, answer_data=cited.data)
        yield Completed(session_id=sid, content="evidence digest complete")
