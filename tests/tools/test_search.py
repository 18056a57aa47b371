"""The search tool: queries over several backends, merged and numbered."""

from __future__ import annotations

import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import Source, ToolContext
from deepresearch.tools.search import SearchTool


class Backend:
    def __init__(self, name: str, prefix: str, failing: frozenset[str] = frozenset()) -> None:
        self.name = name
        self._prefix = prefix
        self._failing = failing

    async def search(self, query: str, limit: int) -> list[Source]:
        if query in self._failing:
            raise ToolFailure(f"{self.name}: rate limited")
        return [
            Source(f"{self._prefix}:{query}:{n}", f"{query} {n}", f"https://x/{query}/{n}", "t")
            for n in range(2)
        ]


async def test_one_failing_query_does_not_sink_the_others() -> None:
    tool = SearchTool([Backend("pubmed", "pubmed", failing=frozenset({"bad"}))])
    output = await tool.call({"query": ["good", "bad", "fine"]}, ToolContext("s"))
    assert "The search for 'bad' failed: pubmed: rate limited" in output.text
    assert "[1] good 0" in output.text and "id: pubmed:good:0" in output.text
    assert "[3] fine 0" in output.text
    assert output.summary == "4 sources found"


async def test_a_failing_backend_is_noted_while_another_answers() -> None:
    tool = SearchTool([Backend("pubmed", "p", failing=frozenset({"q"})), Backend("local", "l")])
    output = await tool.call({"query": ["q"]}, ToolContext("s"))
    assert "Note: pubmed: rate limited" in output.text and "l:q:0" in output.text


async def test_when_every_query_fails_the_model_is_told() -> None:
    tool = SearchTool([Backend("pubmed", "p", failing=frozenset({"a", "b"}))])
    with pytest.raises(ToolFailure, match="rate limited"):
        await tool.call({"query": ["a", "b"]}, ToolContext("s"))


async def test_bad_arguments_are_explained() -> None:
    tool = SearchTool([Backend("local", "l")])
    with pytest.raises(ToolFailure, match="list of strings"):
        await tool.call({"query": [1, 2]}, ToolContext("s"))
    with pytest.raises(ToolFailure, match="non-empty"):
        await tool.call({"query": ["  "]}, ToolContext("s"))
