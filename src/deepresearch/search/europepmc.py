"""Live Europe PMC search: one REST call (``resultType=core``) returns abstracts too.

A record with a PMID gets the corpus's ``pubmed:<PMID>`` id and the PubMed URL,
so it merges with the same article from PubMed or the local index; preprints
and PMC-only records keep ids of their own.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import httpx

from deepresearch.errors import ToolFailure
from deepresearch.search.pubmed import abstract_snippet, pubmed_url
from deepresearch.search.ratelimit import RateLimiter, paced_get
from deepresearch.search.results import SearchResult

# Europe PMC abstracts carry a little HTML: <h4> section headings, <b>, <i>, <sup>, <p>.
_HEADING = re.compile(r"<h[1-6][^>]*>(.*?)</h[1-6]\s*>", re.IGNORECASE | re.DOTALL)
_BREAK = re.compile(r"</?(?:p|br|div|li|ul|ol)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_YEAR = re.compile(r"[0-9]{4}")


class EuropePMCSearch:
    """A ``SearchBackend`` over Europe PMC's REST search; no key needed."""

    name = "europepmc"

    def __init__(
        self,
        client: httpx.AsyncClient,
        limiter: RateLimiter | None = None,
        *,
        base_url: str = "https://www.ebi.ac.uk/europepmc/webservices/rest",
        timeout: float = 10.0,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._url = f"{base_url.rstrip('/')}/search"
        self._timeout = timeout

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        if limit <= 0 or not query.strip():
            return []
        params = {"query": query, "format": "json", "resultType": "core", "pageSize": str(limit)}
        try:
            response = await paced_get(
                self._client, self._limiter, self._url, params, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise ToolFailure(f"Europe PMC: search timed out after {self._timeout:g} s") from exc
        except TimeoutError as exc:
            raise ToolFailure("Europe PMC: too many searches are waiting their turn") from exc
        except httpx.HTTPError as exc:
            raise ToolFailure(f"Europe PMC: search failed ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise ToolFailure(f"Europe PMC: search answered HTTP {response.status_code}")
        try:
            return parse_results(response.json())[:limit]
        except ValueError as exc:  # also json.JSONDecodeError
            raise ToolFailure(f"Europe PMC: unreadable search answer ({exc})") from exc

    async def probe(self, timeout: float) -> bool:
        """Whether Europe PMC answers a one-hit search within ``timeout``; never raises."""
        params = {"query": "malaria", "format": "json", "pageSize": "1"}
        try:
            async with asyncio.timeout(timeout):
                response = await paced_get(
                    self._client, self._limiter, self._url, params, timeout=timeout
                )
        except Exception:  # a probe only reports; BaseException (cancellation) still propagates
            return False
        return response.status_code == httpx.codes.OK


def parse_results(payload: Any) -> list[SearchResult]:
    """Sources from a ``resultType=core`` JSON answer; ``ValueError`` if its shape is wrong."""
    results = payload.get("resultList") if isinstance(payload, dict) else None
    records = results.get("result", []) if isinstance(results, dict) else None
    if not isinstance(records, list):
        raise ValueError("no resultList.result list")
    return [_source(record) for record in records if isinstance(record, dict)]


def _source(record: dict[str, Any]) -> SearchResult:
    pmid, pmcid, doi = _field(record, "pmid"), _field(record, "pmcid"), _field(record, "doi")
    origin, rid = _field(record, "source"), _field(record, "id")
    if pmid:
        source_id = f"pubmed:{pmid}"
    elif pmcid:
        source_id = f"pmc:{pmcid}"
    elif doi:
        source_id = f"doi:{doi}"
    else:
        source_id = f"europepmc:{origin}:{rid}"
    url = pubmed_url(pmid) if pmid else f"https://europepmc.org/article/{origin}/{rid}"
    title = _plain(_field(record, "title")).replace("\n", " ")
    abstract = _plain(_field(record, "abstractText"))
    return SearchResult(
        source_id=source_id,
        title=title,
        url=url,
        text=f"{title}\n{abstract}".strip(),
        year=_year(_field(record, "pubYear")),
        snippet=abstract_snippet(abstract),
    )


def _field(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return str(value).strip() if isinstance(value, str | int) else ""


def _plain(markup: str) -> str:
    """HTML to text: headings become "Heading: " lines, as PubMed's labelled sections read."""
    text = _HEADING.sub(lambda m: f"\n{_TAG.sub('', m.group(1)).strip().rstrip(':')}: ", markup)
    text = html.unescape(_TAG.sub("", _BREAK.sub("\n", text)))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _year(value: str) -> int | None:
    return int(value) if _YEAR.fullmatch(value) else None
