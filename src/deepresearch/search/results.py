"""What a search backend returns: the search package's own record of a found text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepresearch.search.understanding import Understanding

TITLE_CHARS = 80
SNIPPET_WORDS = 40


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


# An abstract's sentence that states its question: "We aimed to determine whether ...".
_AIM = re.compile(
    r"\b(?:whether|to (?:determine|assess|evaluate|investigate|examine|compare|test)|"
    r"aim|purpose|objective|hypothes)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*[A-Z][A-Za-z ]{1,40}:\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
UNTITLED = "Untitled abstract: "


def derived_title(text: str) -> str:
    """A readable title for a record that has none, marked as made from its text.

    The sentence that states what the study asked, if one does, else its first
    sentence; trimmed to a line, without its section label ("Background:").
    """
    sentences = [
        _LABEL.sub("", s).strip()
        for line in text.splitlines()[:3]
        for s in _SENTENCE_END.split(line.strip())
        if s.strip()
    ]
    chosen = next((s for s in sentences if _AIM.search(s)), sentences[0] if sentences else "")
    flat = " ".join(chosen.split()).rstrip(".")
    if len(flat) > TITLE_CHARS:
        flat = flat[:TITLE_CHARS].rsplit(" ", 1)[0] + "…"
    return UNTITLED + flat if flat else UNTITLED.rstrip(": ")


def snippet(text: str, understanding: Understanding | None) -> str:
    """About forty words of ``text`` around the first of the question's words it has."""
    flat = " ".join(text.split())
    wanted = []
    if understanding is not None:
        wanted = [w for f in understanding.focus for w in f.words] + list(understanding.terms)
    lowered = flat.casefold()
    at = min((i for i in (lowered.find(w) for w in wanted if len(w) > 2) if i >= 0), default=0)
    start = flat.rfind(". ", 0, at) + 2 if at > 0 else 0
    start = 0 if start == 1 else start  # no sentence end before it: from the start
    piece = flat[start:].split(" ")
    tail = "…" if len(piece) > SNIPPET_WORDS else ""
    return " ".join(piece[:SNIPPET_WORDS]) + tail
