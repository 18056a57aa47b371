"""Citation markers: which brackets are citations, and what happens to the rest."""

from __future__ import annotations

from deepresearch.agent.citations import cite, renumber_partial
from deepresearch.tools.base import CitationRegistry, Source


def registry(count: int) -> CitationRegistry:
    numbers = CitationRegistry()
    for n in range(1, count + 1):
        numbers.number(Source(f"pubmed:{n}", f"Title {n}", f"https://x/{n}", f"text {n}"))
    return numbers


def test_markers_in_their_usual_forms_become_citations() -> None:
    text = "A [1]. B [2, 3]. C [1-3]. D [^4]. E [ 5 ]. F [4\u20135][1]."
    cited = cite(text, registry(5))
    assert [c.id for c in cited.data.citations] == ["1", "2", "3", "4", "5"]
    assert cited.data.answer == "A [1]. B [2, 3]. C [1, 2, 3]. D [4]. E [5]. F [4, 5][1]."
    assert cited.dropped == []


def test_brackets_that_are_not_citations_are_left_alone() -> None:
    text = (
        "Dose range [10, 20] mg/day [1]. Per the guideline [2020]. OR 1.5 [95% CI 1.2-3.4]. "
        "Code `a[0]` and arr[2] stay."
    )
    cited = cite(text, registry(3))
    assert cited.data.answer == text
    assert [c.id for c in cited.data.citations] == ["1"]
    assert cited.dropped == []


def test_code_blocks_are_never_rewritten() -> None:
    text = "Run this:\n```python\nx = [4]\n```\nThen [1]."
    cited = cite(text, registry(2))
    assert cited.data.answer == text and [c.id for c in cited.data.citations] == ["1"]


def test_a_marker_just_past_the_sources_is_dropped_and_reported() -> None:
    cited = cite("Yes [1]. Also [4]. Both [1, 5] here; ratio 1 : 2 .", registry(2))
    assert cited.data.answer == "Yes [1]. Also. Both [1] here; ratio 1 : 2 ."
    assert cited.dropped == [4, 5]
    assert [(c.id, c.source_id, c.title) for c in cited.data.citations] == [
        ("1", "pubmed:1", "Title 1")
    ]


def test_citations_are_renumbered_in_order_of_first_use() -> None:
    cited = cite("Starts [4], then [6] and [5, 4]; again [6]. Range [1-2].", registry(6))
    assert cited.data.answer == "Starts [1], then [2] and [3, 1]; again [2]. Range [4, 5]."
    assert [(c.id, c.source_id) for c in cited.data.citations] == [
        ("1", "pubmed:4"),
        ("2", "pubmed:6"),
        ("3", "pubmed:5"),
        ("4", "pubmed:1"),
        ("5", "pubmed:2"),
    ]


def test_streamed_text_is_numbered_as_the_final_answer_will_be() -> None:
    numbers = registry(6)
    whole = "Starts [4], then [6] and [5, 4]; again [6]."
    final = cite(whole, numbers).data.answer
    shown = [renumber_partial(whole[:end], numbers) for end in range(1, len(whole) + 1)]
    for text in shown:
        assert final.startswith(text.rstrip()) or text.rstrip() == final
    # A marker still being written is held back, never shown with its old number.
    assert renumber_partial("Starts [4], then [6", numbers) == "Starts [1], then "
    assert renumber_partial("Starts [4], then [6, ", numbers) == "Starts [1], then "
