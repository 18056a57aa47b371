"""Turning an answer's ``[n]`` markers into the contract's citation list.

Medical text is full of brackets that are not citations ("[95% CI 1.2-3.4]",
"[10, 20] mg/day", "[2020]", ``a[0]`` in code), so a bracket counts as a
citation only when every number in it could be one: no year, nothing far past
the sources the session has. Such brackets are kept as written; only
plausible markers that name no source are removed (and reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepresearch.events import AnswerData, Citation
from deepresearch.tools.base import CitationRegistry

# [1], [1, 2], [1-3] (or an en dash), [^1], [ 3 ]; not a[0] (indexing: a word right before).
MARKER = re.compile(r"(?<!\w)\[\^?\s*(\d{1,4}(?:\s*[-\u2013,]\s*\d{1,4})*)\s*\]")
CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
PREVIEW_CHARS = 300
# A marker a little past the last source is a model's slip (dropped); far past, not a citation.
SLACK = 5
MAX_RANGE = 20


@dataclass(frozen=True)
class CitedAnswer:
    data: AnswerData
    dropped: list[int]  # markers that named no source; removed from the answer


def _numbers(inside: str) -> list[int] | None:
    """The numbers a marker names (ranges expanded), or None if it is no marker."""
    numbers: list[int] = []
    for part in re.split(r"\s*,\s*", inside.strip()):
        bounds = [int(bound) for bound in re.split(r"\s*[-\u2013]\s*", part)]
        first, last = bounds[0], bounds[-1]
        if len(bounds) > 2 or last < first or last - first > MAX_RANGE:
            return None
        numbers.extend(range(first, last + 1))
    return numbers


def cite(answer: str, registry: CitationRegistry) -> CitedAnswer:
    used: list[int] = []
    dropped: list[int] = []
    ceiling = len(registry) + SLACK

    def rewrite(match: re.Match[str]) -> str:
        numbers = _numbers(match.group(1))
        if numbers is None or any(n < 1 or n > ceiling for n in numbers):
            return match.group(0)  # not a citation: leave the text as written
        known = [n for n in numbers if registry.get(n) is not None]
        dropped.extend(n for n in numbers if n not in known)
        used.extend(n for n in known if n not in used)
        if len(known) == len(numbers):
            return match.group(0)
        return f"[{', '.join(str(n) for n in known)}]" if known else "\x00"

    pieces: list[str] = []
    at = 0
    for code in CODE.finditer(answer):
        pieces.append(MARKER.sub(rewrite, answer[at : code.start()]))
        pieces.append(code.group(0))
        at = code.end()
    pieces.append(MARKER.sub(rewrite, answer[at:]))
    # Where a marker was removed, close the gap it leaves before punctuation.
    text = re.sub(r"[ \t]*\x00(?=[.,;:!?)])|\x00", "", "".join(pieces))
    citations = []
    for number in used:
        source = registry.get(number)
        assert source is not None
        citations.append(
            Citation(
                id=str(number),
                full_content=source.text,
                preview=source.snippet or source.text[:PREVIEW_CHARS],
                source_id=source.source_id,
                url=source.url,
                title=source.title,
            )
        )
    return CitedAnswer(AnswerData(answer=text.strip(), citations=citations), sorted(set(dropped)))
