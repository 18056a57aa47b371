"""What a search backend returns: the search package's own record of a found text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchResult:
    """A text a backend found, and what is known about it."""

    source_id: str  # stable: corpus record id (``pubmed:123``), ``pmid:123``, or the URL
    title: str  # always set; see ``title_derived``
    url: str
    text: str  # the full text the backend has
    year: int | None = None
    snippet: str = ""  # the part most relevant to the query, for display
    # The record had no title: ``title`` was made from its text, and says so.
    title_derived: bool = False
    score: float = 0.0  # the backend's own relevance, comparable within one answer only
