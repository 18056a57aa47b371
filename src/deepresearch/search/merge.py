"""Merging the ranked results of several search backends into one list.

The same article often comes back from the local corpus, PubMed and Europe
PMC, and a web result may point at its DOI. Two sources are the same when they
share a source id or a DOI (from a ``doi:`` id or a doi.org URL), or a
normalised URL when one of them is identified by its URL (a web result).

URLs alone do not make two records one: MedQuAD has 16,407 passages on 5,476
pages, and two passages of one page are two pieces of evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import zip_longest
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from deepresearch.search.results import SearchResult

_DOI_HOSTS = frozenset({"doi.org", "dx.doi.org", "www.doi.org"})


def merge_results(batches: Sequence[Sequence[SearchResult]], limit: int) -> list[SearchResult]:
    """Interleave ``batches`` by rank (each backend's best first), without duplicates.

    A duplicate keeps the position of the copy seen first but the text of the
    longer one, so a full live abstract replaces a snippet-only copy in place.
    """
    kept: list[SearchResult] = []
    by_key: dict[str, int] = {}  # ids, DOIs, and pages of URL-identified sources -> slot
    by_page: dict[str, int] = {}  # every source's page -> slot: what a web result may join
    for source in _round_robin(batches):
        ids, pages = _identity(source)
        web = _is_web(source.source_id)
        page_index = by_page if web else by_key
        matches = [by_key[k] for k in ids if k in by_key]
        matches += [page_index[p] for p in pages if p in page_index]
        slot = min(matches, default=None)
        if slot is None:
            slot = len(kept)
            kept.append(source)
        elif len(source.text) > len(kept[slot].text):
            kept[slot] = source
        # Learn every key, so a third copy matching only the newcomer is found too.
        for key in ids | pages if web else ids:
            by_key.setdefault(key, slot)
        for page in pages:
            by_page.setdefault(page, slot)
    return kept[: max(limit, 0)]


def _identity(source: SearchResult) -> tuple[set[str], set[str]]:
    """``source``'s id and DOI keys, and its normalised page URLs."""
    ids, pages = {f"id:{source.source_id}"}, set()
    for value in (source.source_id, source.url):
        if _is_web(value):
            pages.add(f"url:{normalize_url(value)}")
        doi = doi_of(value)
        if doi:
            ids.add(f"doi:{doi}")
    return ids, pages


def normalize_url(url: str) -> str:
    """A comparison key for ``url``: case-folded scheme and host, no trailing slash,
    no fragment, no ``utm_*`` tracking parameters; http and https count as one."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "http":
        scheme = "https"  # the same page; mixed schemes are common in older links
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not k.lower().startswith("utm_")
        ]
    )
    return urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), query, ""))


def doi_of(value: str) -> str | None:
    """The DOI in a ``doi:`` id or a doi.org URL, lower-cased (DOIs ignore case)."""
    if value[:4].lower() == "doi:":
        doi = value[4:]
    elif _is_web(value):
        parts = urlsplit(value)
        if parts.netloc.lower() not in _DOI_HOSTS:
            return None
        doi = unquote(parts.path.lstrip("/"))
    else:
        return None
    doi = doi.strip().lower()
    return doi if doi.startswith("10.") else None


def _is_web(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def _round_robin(batches: Sequence[Sequence[SearchResult]]) -> Iterator[SearchResult]:
    for rank in zip_longest(*batches):  # shorter batches pad with None
        yield from (source for source in rank if source is not None)
