"""The one small interface every tool implements, and what tools return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from deepresearch.search.results import SearchResult


@dataclass(frozen=True)
class Source:
    """A piece of evidence a tool found: what a citation can point at."""

    source_id: str  # stable: corpus record id (``pubmed:123``), ``pmid:123``, or the URL
    title: str
    url: str
    text: str  # the full text the tool saw
    year: int | None = None
    snippet: str = ""  # the part most relevant to the query, for display

    @classmethod
    def from_result(cls, result: SearchResult) -> Source:
        """A search backend's result as a citable source (a derived title says so)."""
        return cls(
            result.source_id, result.title, result.url, result.text, result.year, result.snippet
        )


@dataclass(frozen=True)
class ToolOutput:
    text: str  # goes back to the model inside <tool_response>
    summary: str  # one readable line for the ``tool_result`` event ("5 sources found")
    sources: tuple[Source, ...] = ()


class CitationRegistry:
    """Session-local numbering of sources: the same source keeps its number."""

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}
        self._sources: list[Source] = []

    def number(self, source: Source) -> int:
        existing = self._numbers.get(source.source_id)
        if existing is not None:
            return existing
        self._sources.append(source)
        self._numbers[source.source_id] = len(self._sources)
        return len(self._sources)

    def get(self, number: int) -> Source | None:
        if 1 <= number <= len(self._sources):
            return self._sources[number - 1]
        return None

    def sources(self) -> list[Source]:
        """Every numbered source, in number order."""
        return list(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


@dataclass
class ToolContext:
    """What a tool may use of its session: nothing shared with other sessions."""

    session_id: str
    citations: CitationRegistry = field(default_factory=CitationRegistry)


class Tool(Protocol):
    """A tool the agent can call by name."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments, shown to the model

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        """Run the tool. Raise ``ToolFailure`` for an error the model should see."""
        ...
