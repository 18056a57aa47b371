"""The offline evidence digest, over a real index of small hand-made corpora."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deepresearch.agent import EvidenceDigestAgent
from deepresearch.agent.digest import PREAMBLE
from deepresearch.agent.ranking import Question, stem
from deepresearch.events import Event, FinalAnswer, ToolCallStart
from deepresearch.search import EvidenceIndex
from deepresearch.services import IndexState, LocalSearch
from deepresearch.tools.base import Tool
from deepresearch.tools.search import SearchTool

LINE = re.compile(r"^- (.+) \[(\d+)\]$")
Tools = dict[str, Tool]
Search = Callable[[list[dict[str, Any]]], Awaitable[Tools]]


def record(rid: str, source: str, text: str) -> dict[str, Any]:
    return {"id": rid, "source": source, "url": f"https://example.org/{rid}", "text": text}


INFORMATIVE = "Hypertension is treated with lifestyle changes and medicines."
CORPUS = [
    record(
        "seniors:1",
        "NIHSeniorHealth",
        "How is hypertension treated? " + INFORMATIVE + " Learn more about hypertension here. "
        "For more information about hypertension treatment, call 1-800-555-0100. "
        "Visit https://www.example.gov/hypertension to read about hypertension treatment.",
    ),
    record(
        "ghr:2",
        "GHR",
        "These resources address the diagnosis or management of hypertension: - Genetic "
        "Testing Registry: Essential hypertension - MedlinePlus Encyclopedia: Hypertension",
    ),
    record(
        "pubmed:3",
        "PubMed",
        "Background: Hypertension treatment in older adults is often debated by doctors.\n"
        "Methods: We randomised 300 older adults with hypertension to two treatment arms.\n"
        "Conclusions: Intensive treatment of hypertension lowered the rate of stroke in "
        "older adults.",
    ),
    record(
        "mplus:4",
        "MPlusHealthTopics",
        "Hypertension treatment often starts with a diet low in salt. Regular exercise is an "
        "important part of hypertension management. Losing weight helps treat hypertension in "
        "people who are overweight. Drinking less alcohol is part of treating hypertension. "
        "Stopping smoking also supports the treatment of hypertension.",
    ),
    record(
        "nhlbi:5",
        "NHLBI",
        "High blood pressure (hypertension) is treated with lifestyle changes and medicines.",
    ),
    record("asthma:6", "NHLBI", "Inhaled corticosteroids reduce asthma attacks in children."),
]


GOUT = [
    record(
        "fact:1",
        "CDC",
        "Gout treatment relieves the pain of a flare quickly. Gout treatment uses colchicine "
        "or steroids during flares. Gout treatment includes allopurinol to lower uric acid. "
        "Gout treatment also includes changes in diet and drink. Gout treatment with "
        "febuxostat lowers uric acid too. Gout treatment usually continues for many years.",
    ),
    record("nih:2", "NIDDK", "Gout is treated with medicines that lower uric acid in blood."),
    record("nih:3", "GARD", "Gout is treated with medicines that lower uric acid in blood, too."),
    record("nih:4", "NHLBI", "Resting the joint helps during a gout flare and its treatment."),
    record("nih:5", "NINDS", "Ice packs can ease gout pain while the treatment starts."),
]


@pytest.fixture
async def search(tmp_path: Path) -> AsyncIterator[Search]:
    """Indexes the given records and returns the search tool over them."""
    indexes: list[EvidenceIndex] = []

    async def over(records: list[dict[str, Any]]) -> Tools:
        folder = tmp_path / str(len(indexes))
        folder.mkdir()
        corpus = folder / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
        index = EvidenceIndex(folder / "index.sqlite")
        indexes.append(index)
        await index.build([corpus])
        state = IndexState()
        state.ready.set()
        return {"search": SearchTool([LocalSearch(index, state)])}

    yield over
    for index in indexes:
        index.close()


@pytest.fixture
async def tools(search: Search) -> Tools:
    return await search(CORPUS)


async def run(tools: Tools, question: str) -> list[Event]:
    return [event async for event in EvidenceDigestAgent("sid-1", tools).run(question)]


def quoted(final: FinalAnswer) -> list[tuple[str, str]]:
    """(sentence, cited source id) for every line of the digest after the preamble."""
    sources = {c.id: c.source_id for c in final.answer_data.citations}
    body = final.answer_data.answer.removeprefix(PREAMBLE).strip().splitlines()
    lines = [LINE.match(line) for line in body]
    assert all(lines), body
    return [(m.group(1), sources[m.group(2)]) for m in lines if m]


def test_the_question_becomes_a_few_query_variants() -> None:
    treated = Question.parse("How should type 2 diabetes be managed?")
    assert treated.variants() == [
        "How should type 2 diabetes be managed?",
        "type 2 diabetes managed",
        "type 2 diabetes treatment",
        "type 2 diabetes management",
    ]
    assert Question.parse("What causes asthma?").variants() == [
        "What causes asthma?",
        "causes asthma",
        "asthma causes",
    ]
    # A yes/no question's words are all its topic: no aspect queries.
    yes_no = Question.parse("Is aspirin safe in patients treated for angina?")
    assert yes_no.variants() == [
        "Is aspirin safe in patients treated for angina?",
        "aspirin safe patients treated angina",
    ]
    assert (yes_no.topic, yes_no.intents) == (
        ("aspirin", "safe", "patients", "treated", "angina"),
        (),
    )
    assert Question.parse("What is it?").variants() == ["What is it?"]


def test_the_stemmer_joins_forms_of_a_word() -> None:
    assert {stem(w) for w in ["treatment", "treated", "treats", "treating"]} == {"treat"}
    assert {stem(w) for w in ["management", "managed", "manage"]} == {"manag"}
    assert stem("diabetes") == stem("diabetic") and stem("progress") == stem("progression")


async def test_events_have_the_agent_shape_and_one_search_with_every_variant(
    tools: Tools,
) -> None:
    question = "How is hypertension treated?"
    events = await run(tools, question)
    assert [e.type for e in events] == [
        "round_start",
        "thinking",
        "tool_call_start",
        "tool_result",
        "answer_generation",
        "final_answer_chunk",
        "final_answer",
        "completed",
    ]
    assert {e.session_id for e in events} == {"sid-1"}
    call = next(e for e in events if isinstance(e, ToolCallStart))
    assert call.tool_name == "search"
    assert call.tool_args == {"query": Question.parse(question).variants()}
    final = events[-2]
    assert isinstance(final, FinalAnswer)
    assert events[-3].content == final.content == final.answer_data.answer
    # The reader is told plainly what this is.
    assert final.answer_data.answer.startswith(PREAMBLE)
    assert "not a synthesis" in PREAMBLE and "Extractive evidence digest" in PREAMBLE


async def test_informative_sentences_are_chosen_and_boilerplate_never(
    tools: Tools,
) -> None:
    events = await run(tools, "How is hypertension treated?")
    final = events[-2]
    assert isinstance(final, FinalAnswer)
    lines = quoted(final)
    sentences = [sentence for sentence, _ in lines]
    assert 4 <= len(lines) <= 6
    # The plain statement of treatment is quoted (in either source's words).
    assert any(s.endswith("is treated with lifestyle changes and medicines.") for s in sentences)
    for junk in ["Learn more", "1-800", "https://", "These resources", "Testing Registry"]:
        assert not any(junk in s for s in sentences), junk
    # The abstract speaks through its conclusion, not its background or methods.
    from_abstract = [s for s, source in lines if source == "pubmed:3"]
    assert from_abstract[0].startswith("Intensive treatment of hypertension lowered")
    assert not any("asthma" in s for s in sentences)


async def test_citations_point_at_the_quoted_sources(tools: Tools) -> None:
    events = await run(tools, "How is hypertension treated?")
    final = events[-2]
    assert isinstance(final, FinalAnswer)
    lines = quoted(final)
    by_id = {c.source_id: c for c in final.answer_data.citations}
    for sentence, source_id in lines:
        assert sentence in by_id[source_id].full_content
        assert by_id[source_id].url == f"https://example.org/{source_id}"
    # Every citation is used, in order of first use.
    assert [c.source_id for c in final.answer_data.citations] == list(
        dict.fromkeys(source for _, source in lines)
    )


async def test_two_sentences_at_most_from_one_source_and_no_repeats(search: Search) -> None:
    events = await run(await search(GOUT), "How is gout treated?")
    final = events[-2]
    assert isinstance(final, FinalAnswer)
    lines = quoted(final)
    # fact:1 has six sentences on treating gout, the best matches of all.
    assert Counter(source for _, source in lines)["fact:1"] == 2
    # nih:3 says what nih:2 says: one of them is quoted, not both.
    repeats = [s for s, _ in lines if s.startswith("Gout is treated with medicines")]
    assert len(repeats) == 1


async def test_no_answer_when_nothing_matches(tools: Tools) -> None:
    events = await run(tools, "How are zebrafish fins regenerated?")
    assert [e.type for e in events] == [
        "round_start",
        "thinking",
        "tool_call_start",
        "tool_result",
        "no_answer",
    ]
    assert "no relevant evidence" in events[-1].content


async def test_no_answer_when_the_search_tool_fails() -> None:
    events = await run({}, "How is hypertension treated?")
    assert [e.type for e in events][-2:] == ["tool_error", "no_answer"]


def test_a_source_s_own_reference_marks_are_not_taken_for_citations() -> None:
    from deepresearch.agent.digest import compose
    from deepresearch.agent.ranking import Candidate
    from deepresearch.tools.base import Source, ToolContext

    context = ToolContext("s")
    first = Source("medquad:a", "A", "u", "x")
    second = Source("medquad:b", "B", "u2", "text")
    context.citations.number(first)
    sentence = "It is inherited in an autosomal recessive manner.[1][2]"
    chosen = [Candidate(1.0, sentence, second, frozenset())]
    digest = compose(chosen, context)
    assert digest is not None
    assert digest.endswith("- It is inherited in an autosomal recessive manner. [2]")


def test_clinical_terms_are_also_searched_in_consumer_words() -> None:
    from deepresearch.agent.ranking import Question

    question = Question.parse("How is hypertension treated?")
    assert "high blood pressure treatment" in question.variants()
    assert question.weights()["pressur"] == 1.0
    assert Question.parse("Does metformin reduce mortality?").lay_topic() is None
