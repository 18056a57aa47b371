"""Merging backends' ranked results: round-robin order, one entry per article."""

from __future__ import annotations

from deepresearch.search.merge import doi_of, merge_results, normalize_url
from deepresearch.tools.base import Source


def src(source_id: str, url: str = "", text: str = "text") -> Source:
    return Source(
        source_id=source_id, title=source_id, url=url or f"https://x.org/{source_id}", text=text
    )


def ids(sources: list[Source]) -> list[str]:
    return [s.source_id for s in sources]


def test_batches_interleave_by_rank() -> None:
    local = [src("a1"), src("a2"), src("a3")]
    live = [src("b1"), src("b2")]
    assert ids(merge_results([local, live, []], 10)) == ["a1", "b1", "a2", "b2", "a3"]


def test_limit_cuts_the_merged_list() -> None:
    merged = merge_results([[src("a1"), src("a2")], [src("b1"), src("b2")]], 3)
    assert ids(merged) == ["a1", "b1", "a2"]
    assert merge_results([[src("a1")]], 0) == []
    assert merge_results([], 5) == []


def test_one_article_from_corpus_pubmed_and_europe_pmc_is_one_source() -> None:
    url = "https://pubmed.ncbi.nlm.nih.gov/123/"
    corpus = src("pubmed:123", url, "BACKGROUND: short")
    pubmed = src("pubmed:123", url, "Title\nBACKGROUND: the full abstract, much longer")
    europe = src("pubmed:123", url, "Title\nBackground: a bit longer")
    merged = merge_results([[corpus, src("local:2")], [pubmed], [src("epmc:1"), europe]], 10)
    assert ids(merged) == ["pubmed:123", "epmc:1", "local:2"]
    assert merged[0] is pubmed  # the longest text, in the first copy's place


def test_longer_text_replaces_in_place_but_never_shorter() -> None:
    snippet_only = src("https://example.org/a", "https://example.org/a", "short")
    full = src("web:a", "https://example.org/a/", "a much longer full text")
    merged = merge_results([[src("first"), snippet_only], [full, src("other")]], 10)
    assert ids(merged) == ["first", "web:a", "other"]  # full took snippet_only's slot
    kept = merge_results([[full], [snippet_only]], 10)
    assert kept == [full]


def test_doi_ids_and_doi_urls_are_the_same_article() -> None:
    preprint = src("doi:10.1101/2023.01.01.000001", "https://europepmc.org/article/PPR/PPR1")
    web = src(
        "https://doi.org/10.1101/2023.01.01.000001", "https://doi.org/10.1101/2023.01.01.000001"
    )
    old_link = src("x", "http://dx.doi.org/10.1101%2F2023.01.01.000001")
    merged = merge_results([[preprint], [web], [old_link]], 10)
    assert len(merged) == 1


def test_doi_comparison_ignores_case_but_not_the_suffix() -> None:
    assert doi_of("doi:10.1000/ABC") == doi_of("https://doi.org/10.1000/abc") == "10.1000/abc"
    assert doi_of("https://example.org/10.1000/abc") is None
    assert doi_of("pubmed:123") is None
    merged = merge_results([[src("doi:10.1000/abc")], [src("doi:10.1000/abd")]], 10)
    assert len(merged) == 2


def test_urls_match_without_tracking_fragments_slashes_or_case() -> None:
    tracked = "HTTPS://Example.ORG/study/?id=7&utm_source=news&UTM_Medium=mail#results"
    assert normalize_url(tracked) == normalize_url("https://example.org/study?id=7")
    assert normalize_url("http://example.org/a") == normalize_url("https://example.org/a/")
    assert normalize_url("https://example.org/a?id=7") != normalize_url(
        "https://example.org/a?id=8"
    )
    assert normalize_url("https://example.org/Path") != normalize_url("https://example.org/path")
    # Web results are identified by their URLs.
    plain = "https://example.org/study?id=7"
    merged = merge_results([[src(tracked, tracked)], [src(plain, plain)]], 10)
    assert ids(merged) == [tracked]


def test_a_copy_matching_two_entries_joins_the_first() -> None:
    by_id = src("pubmed:9", "https://pubmed.ncbi.nlm.nih.gov/9/")
    by_url = src("web:9", "https://example.org/nine")
    bridge = src("pubmed:9", "https://example.org/nine", "longer text than both")
    merged = merge_results([[by_id], [by_url], [bridge]], 10)
    assert ids(merged) == ["pubmed:9", "web:9"]
    assert merged[0] is bridge


def test_passages_of_one_page_stay_apart_unless_a_web_result_is_that_page() -> None:
    # MedQuAD answers several questions from one page: distinct records, one URL.
    page = "http://nihseniorhealth.gov/breastcancer/toc.html"
    what, treated = src("medquad:1", page), src("medquad:2", page)
    assert ids(merge_results([[what, treated]], 10)) == ["medquad:1", "medquad:2"]

    pubmed = src("pubmed:5", "https://pubmed.ncbi.nlm.nih.gov/5/")
    web = src("https://pubmed.ncbi.nlm.nih.gov/5", "https://pubmed.ncbi.nlm.nih.gov/5")
    assert ids(merge_results([[pubmed], [web]], 10)) == ["pubmed:5"]
