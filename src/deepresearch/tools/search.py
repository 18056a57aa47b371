"""``search`` and ``google_scholar``: queries against the configured search backends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from deepresearch.errors import ToolFailure
from deepresearch.search.merge import merge_results
from deepresearch.search.results import SearchResult
from deepresearch.tools.base import Source, ToolContext, ToolOutput

RESULTS_PER_QUERY = 5
MAX_QUERIES = 5


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[SearchResult]: ...


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
        outcomes = await asyncio.gather(*(self._search(q) for q in queries), return_exceptions=True)
        failed: list[str] = []
        for query, outcome in zip(queries, outcomes, strict=True):
            if isinstance(outcome, ToolFailure):
                failed.append(str(outcome))
                sections.append(f"The search for '{query}' failed: {outcome}")
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            results, failures = outcome
            sections.extend(f"Note: {failure}" for failure in failures)
            if not results:
                sections.append(f"A search for '{query}' found no results.")
                continue
            lines = [f"A search for '{query}' found {len(results)} results:"]
            for result in results:
                source = Source.from_result(result)
                number = context.citations.number(source)
                year = f" ({source.year})" if source.year else ""
                lines.append(
                    f"[{number}] {source.title}{year}\n"
                    f"id: {source.source_id} | {source.url}\n{source.snippet}"
                )
                found.append(source)
            sections.append("\n\n".join(lines))
        if len(failed) == len(queries):
            raise ToolFailure("; ".join(failed))
        distinct = len({source.source_id for source in found})
        return ToolOutput(
            text="\n=======\n".join(sections),
            summary=f"{distinct} sources found",
            sources=tuple(found),
        )

    async def _search(self, query: str) -> tuple[list[SearchResult], list[str]]:
        """Merged results of every backend, and the failures of those that failed."""
        outcomes = await asyncio.gather(
            *(backend.search(query, RESULTS_PER_QUERY) for backend in self._backends),
            return_exceptions=True,
        )
        batches: list[list[SearchResult]] = []
        failures: list[str] = []
        for outcome in outcomes:
            if isinstance(outcome, ToolFailure):
                failures.append(str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                batches.append(outcome)
        if failures and not batches:
            raise ToolFailure("; ".join(failures))
        return merge_results(batches, RESULTS_PER_QUERY + 3 * (len(batches) - 1)), failures
