"""Turning an answer's ``[n]`` markers into the contract's citation list."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepresearch.events import AnswerData, Citation
from deepresearch.tools.base import CitationRegistry

# [1], [1, 2], [1,2,3]
MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
PREVIEW_CHARS = 300


@dataclass(frozen=True)
class CitedAnswer:
    data: AnswerData
    dropped: list[int]  # markers that named no source; removed from the answer


def cite(answer: str, registry: CitationRegistry) -> CitedAnswer:
    used: list[int] = []
    dropped: list[int] = []

    def keep_known(match: re.Match[str]) -> str:
        numbers = [int(part) for part in match.group(1).split(",")]
        known = [n for n in numbers if registry.get(n) is not None]
        dropped.extend(n for n in numbers if n not in known)
        used.extend(n for n in known if n not in used)
        return f"[{', '.join(str(n) for n in known)}]" if known else ""

    text = MARKER.sub(keep_known, answer)
    if dropped:
        text = re.sub(r"[ \t]+([.,;:])", r"\1", text)
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
