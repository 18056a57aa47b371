"""Turning an answer's ``[n]`` markers into the contract's citation list.

Medical text is full of brackets that are not citations ("[95% CI 1.2-3.4]",
"[10, 20] mg/day", "[2020]", ``a[0]`` in code), so a bracket counts as a
citation only when every number in it could be one: no year, nothing far past
the sources the session has. Such brackets are kept as written; only
plausible markers that name no source are removed (and reported).

Readers expect citations numbered 1, 2, 3 in the order the answer first uses
them, while the model (and the digest) cite by the session's registry numbers,
given out in search order. ``cite`` therefore renumbers: the first source the
answer cites becomes [1], the next new one [2], and so on; every later marker
of a source reuses its number, and each citation's ``id`` is its new number.
``renumber_partial`` does the same for an answer still being streamed: its
text so far, so every ``final_answer_chunk`` shows the numbers the final answer
will have (an answer grows at its end, so the order of first use of its start
never changes), and a marker still being written at its end is held back.
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
# "...treated [1" or "[2, ": a marker whose end has not been streamed yet.
PARTIAL_MARKER = re.compile(r"\[\^?[\d\s,\u2013-]*$")
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
    """The answer with its markers renumbered 1..n by first use, and its citations."""
    numbering = _Numbering(registry)
    text = numbering.rewrite(answer)
    citations = []
    for new, number in enumerate(numbering.order, start=1):
        source = registry.get(number)
        assert source is not None
        citations.append(
            Citation(
                id=str(new),
                full_content=source.text,
                preview=source.snippet or source.text[:PREVIEW_CHARS],
                source_id=source.source_id,
                url=source.url,
                title=source.title,
            )
        )
    dropped = sorted(set(numbering.dropped))
    return CitedAnswer(AnswerData(answer=text.strip(), citations=citations), dropped)


def renumber_partial(answer_so_far: str, registry: CitationRegistry) -> str:
    """A streamed answer's text so far, numbered as ``cite`` will number the whole."""
    held_back = PARTIAL_MARKER.sub("", answer_so_far)
    return _Numbering(registry).rewrite(held_back)


class _Numbering:
    """Registry numbers to numbers in order of first use, for one pass over an answer."""

    def __init__(self, registry: CitationRegistry) -> None:
        self._registry = registry
        self._ceiling = len(registry) + SLACK
        self.order: list[int] = []  # registry numbers, in order of first use
        self.dropped: list[int] = []  # plausible markers that named no source

    def _new(self, number: int) -> int:
        if number not in self.order:
            self.order.append(number)
        return self.order.index(number) + 1

    def _marker(self, match: re.Match[str]) -> str:
        numbers = _numbers(match.group(1))
        if numbers is None or any(n < 1 or n > self._ceiling for n in numbers):
            return match.group(0)  # not a citation: leave the text as written
        known = [n for n in numbers if self._registry.get(n) is not None]
        self.dropped.extend(n for n in numbers if n not in known)
        new = list(dict.fromkeys(self._new(n) for n in known))
        return f"[{', '.join(str(n) for n in new)}]" if new else "\x00"

    def rewrite(self, answer: str) -> str:
        pieces: list[str] = []
        at = 0
        for code in CODE.finditer(answer):
            pieces.append(MARKER.sub(self._marker, answer[at : code.start()]))
            pieces.append(code.group(0))
            at = code.end()
        pieces.append(MARKER.sub(self._marker, answer[at:]))
        # Where a marker was removed, close the gap it leaves before punctuation.
        return re.sub(r"[ \t]*\x00(?=[.,;:!?)])|\x00", "", "".join(pieces))
