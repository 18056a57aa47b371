"""Follow-up context and the answer's own card: earlier turns in the prompt, within budget;
``answer_generation`` once, just before the first answer chunk."""

from __future__ import annotations

from datetime import date

from deepresearch.agent import ReactAgent
from deepresearch.agent.conversation import Exchange, framed_question
from deepresearch.config import AgentTemplate
from tests.agent.test_react import ANSWER, SEARCH_CALL, FakeSearch
from tests.support import ScriptedModel


def test_no_history_leaves_the_question_as_it_is() -> None:
    assert framed_question("Why?", (), 110_000) == "Why?"


def test_history_comes_first_without_its_citation_markers() -> None:
    history = [Exchange("What is metformin?", "A biguanide [1] used first [2, 3].")]
    framed = framed_question("And its side effects?", history, 110_000)
    assert "Question: What is metformin?\nAnswer: A biguanide used first." in framed
    assert framed.endswith("And its side effects?")
    assert "[1]" not in framed


def test_history_is_bounded_newest_kept_and_the_cut_is_visible() -> None:
    history = [Exchange(f"question {n}", "x" * 400) for n in range(10)]
    framed = framed_question("last?", history, 2000)  # a quarter: ~1,750 characters
    assert "question 9" in framed and "question 0" not in framed
    assert "earlier exchange(s) omitted" in framed
    assert len(framed) < 2000


async def test_the_agent_sees_earlier_turns_and_announces_its_answer_once() -> None:
    model = ScriptedModel([SEARCH_CALL, ANSWER], piece=3)
    config = AgentTemplate().for_request()
    history = (Exchange("tok-earlier question?", "tok-earlier answer."),)
    agent = ReactAgent(
        "sid-1", model, {"search": FakeSearch()}, config, date(2026, 1, 2), history=history
    )
    events = [event async for event in agent.run("and the follow-up?")]
    prompt = model.calls[0][1]["content"]
    assert "tok-earlier question?" in prompt and "tok-earlier answer." in prompt
    assert prompt.endswith("and the follow-up?")
    types = [event.type for event in events]
    assert types.count("answer_generation") == 1
    first_chunk = types.index("final_answer_chunk")
    assert types[first_chunk - 1] == "answer_generation"
