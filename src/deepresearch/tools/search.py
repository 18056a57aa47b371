"""``search`` and ``google_scholar``: queries against the configured search backends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import Source, ToolContext, ToolOutput

RESULTS_PER_QUERY = 5
MAX_QUERIES = 5


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[Source]: ...


SEARCH_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "Array of query strings. Include multiple complementary queries.",
        }
    },
    "required": ["query"],
}


class SearchTool:
    """Runs each query on every backend, merges and numbers the results."""

    def __init__(
        self,
        backends: Sequence[SearchBackend],
        *,
        name: str = "search",
        description: str = (
            "Search the medical literature and evidence sources. Accepts multiple queries; "
            "every result is numbered so it can be cited as [n]."
        ),
    ) -> None:
        self.name = name
        self.parameters = SEARCH_PARAMETERS
        self.description = description
        self._backends = list(backends)

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        queries = arguments.get("query")
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ToolFailure('search needs {"query": ["...", ...]}: a list of strings')
        queries = [q.strip() for q in queries if q.strip()][:MAX_QUERIES]
        if not queries:
            raise ToolFailure("search needs at least one non-empty query")
        if not self._backends:
            raise ToolFailure("no search backend is configured on this server")
        sections: list[str] = []
        found: list[Source] = []
        for query, results in zip(
            queries, await asyncio.gather(*(self._search(q) for q in queries)), strict=True
        ):
            if not results:
                sections.append(f"A search for '{query}' found no results.")
                continue
            lines = [f"A search for '{query}' found {len(results)} results:"]
            for source in results:
                number = context.citations.number(source)
                year = f" ({source.year})" if source.year else ""
                lines.append(f"[{number}] {source.title}{year}\n{source.url}\n{source.snippet}")
                found.append(source)
            sections.append("\n\n".join(lines))
        distinct = len({source.source_id for source in found})
        return ToolOutput(
            text="\n=======\n".join(sections),
            summary=f"{distinct} sources found",
            sources=tuple(found),
        )

    async def _search(self, query: str) -> list[Source]:
        batches = await asyncio.gather(
            *(backend.search(query, RESULTS_PER_QUERY) for backend in self._backends)
        )
        merged: dict[str, Source] = {}
        for batch in batches:
            for source in batch:
                merged.setdefault(source.source_id, source)
        return list(merged.values())[: RESULTS_PER_QUERY * len(self._backends)]
