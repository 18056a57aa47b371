"""Citations numbered 1..n in order of first use, as a model's answer streams and at its end."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from deepresearch.agent import ReactAgent, react
from deepresearch.config import AgentTemplate
from deepresearch.events import FinalAnswer, FinalAnswerChunk
from deepresearch.tools.base import Source, ToolContext, ToolOutput
from tests.support import ScriptedModel

SEARCH_CALL = (
    "<think>I need evidence.</think>\n<tool_call>\n"
    '{"name": "search", "arguments": {"query": ["statins"]}}\n</tool_call>'
)
# The model cites by the session's numbers, in search order: [3] first, then [1], [2].
ANSWER_PIECES = [
    "<think>Enough.</think>\n<answer>Statins lower risk [3",
    "]. They are safe [1] and",
    " cheap [3, 1]. Adherence is poor [2",
    "].</answer>",
]


class ThreeSources:
    name = "search"
    description = "finds three fixed sources"
    parameters: dict[str, Any] = {"type": "object", "properties": {"query": {"type": "array"}}}

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        sources = [
            Source(f"pubmed:{n}", f"Trial {n}", f"https://example.org/{n}", f"Text {n}.")
            for n in (1, 2, 3)
        ]
        lines = [f"[{context.citations.number(s)}] {s.title}" for s in sources]
        return ToolOutput("\n".join(lines), "3 sources found", tuple(sources))


async def test_streamed_chunks_and_the_final_answer_share_first_use_numbering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(react, "STREAM_INTERVAL", 0.0)  # an event for every piece
    model = ScriptedModel([SEARCH_CALL, ANSWER_PIECES])
    config = AgentTemplate(max_rounds=5).for_request()
    agent = ReactAgent("sid-1", model, {"search": ThreeSources()}, config, today=date(2026, 1, 2))
    events = [event async for event in agent.run("Do statins work?")]

    final = next(e for e in events if isinstance(e, FinalAnswer))
    expected = "Statins lower risk [1]. They are safe [2] and cheap [1, 2]. Adherence is poor [3]."
    assert final.answer_data.answer == expected
    assert [(c.id, c.source_id) for c in final.answer_data.citations] == [
        ("1", "pubmed:3"),
        ("2", "pubmed:1"),
        ("3", "pubmed:2"),
    ]
    chunks = [e.content for e in events if isinstance(e, FinalAnswerChunk)]
    assert len(chunks) >= 3 and chunks[-1] == expected
    for chunk in chunks:
        # Every streamed state is the start of the final text: no number is ever shown
        # that the final answer changes, and a half-written marker is held back.
        assert expected.startswith(chunk.rstrip()), chunk
        assert "[3]" not in chunk or chunk.endswith("[3].")
