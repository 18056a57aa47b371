"""Live PubMed search through NCBI E-utilities: ``esearch`` ranks, ``efetch`` gives abstracts.

Results use the local corpus's ``pubmed:<PMID>`` ids and PubMed URLs, so the
merger folds a live copy and a corpus copy of the same article into one source.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import httpx

from deepresearch.errors import ToolFailure
from deepresearch.search.ratelimit import RateLimiter, paced_get
from deepresearch.search.results import SearchResult

SNIPPET_CHARS = 300
_YEAR = re.compile(r"\d{4}")


def pubmed_url(pmid: str) -> str:
    return f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


def abstract_snippet(abstract: str, limit: int = SNIPPET_CHARS) -> str:
    """The abstract's start as one line, cut at a word boundary."""
    flat = " ".join(abstract.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + "…"


@dataclass(frozen=True)
class PubMedArticle:
    """One ``PubmedArticle`` of an efetch answer, with what ``SearchResult`` has no room for."""

    pmid: str
    title: str
    abstract: str  # sections as "Label: text", one per line
    journal: str
    year: int | None
    doi: str | None

    def to_source(self) -> SearchResult:
        return SearchResult(
            source_id=f"pubmed:{self.pmid}",
            title=self.title,
            url=pubmed_url(self.pmid),
            text=f"{self.title}\n{self.abstract}".strip(),
            year=self.year,
            snippet=abstract_snippet(self.abstract),
        )


class PubMedSearch:
    """A ``SearchBackend`` over E-utilities; every request waits its turn at ``limiter``."""

    name = "pubmed"

    def __init__(
        self,
        client: httpx.AsyncClient,
        limiter: RateLimiter,
        *,
        api_key: str | None = None,
        tool: str = "deepresearch",
        email: str | None = None,
        base_url: str = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils",
        timeout: float = 10.0,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        # NCBI asks every request to name its tool and a contact, and to carry the key.
        self._identity = {"tool": tool}
        if email:
            self._identity["email"] = email
        if api_key:
            self._identity["api_key"] = api_key

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        if limit <= 0 or not query.strip():
            return []
        ranking = {"db": "pubmed", "term": query, "retmax": str(limit), "sort": "relevance"}
        response = await self._get("esearch", ranking | {"retmode": "json"})
        try:
            found = response.json()
        except ValueError as exc:
            raise ToolFailure("PubMed: esearch gave an answer that is not JSON") from exc
        result = found.get("esearchresult") if isinstance(found, dict) else None
        if not isinstance(result, dict):
            raise ToolFailure("PubMed: esearch gave an answer without 'esearchresult'")
        if "ERROR" in result:  # e.g. a query E-utilities cannot parse, sent with HTTP 200
            raise ToolFailure(f"PubMed: esearch refused the query: {result['ERROR']}")
        pmids = result.get("idlist", [])
        if not isinstance(pmids, list) or not all(isinstance(p, str) for p in pmids):
            raise ToolFailure("PubMed: esearch gave an unreadable id list")
        if not pmids:
            return []
        response = await self._get(
            "efetch",
            {"db": "pubmed", "id": ",".join(pmids), "retmode": "xml", "rettype": "abstract"},
        )
        articles = {a.pmid: a for a in parse_efetch(response.content)}
        # efetch does not keep esearch's order; relevance is esearch's.
        return [articles[p].to_source() for p in pmids if p in articles]

    async def probe(self, timeout: float) -> bool:
        """Whether E-utilities answers within ``timeout``; never raises."""
        url = f"{self._base_url}/einfo.fcgi"
        params = {"db": "pubmed", "retmode": "json"} | self._identity
        try:
            async with asyncio.timeout(timeout):
                response = await paced_get(
                    self._client, self._limiter, url, params, timeout=timeout
                )
        except Exception:  # a probe only reports; BaseException (cancellation) still propagates
            return False
        return response.status_code == httpx.codes.OK

    async def _get(self, endpoint: str, params: dict[str, str]) -> httpx.Response:
        url = f"{self._base_url}/{endpoint}.fcgi"
        try:
            response = await paced_get(
                self._client, self._limiter, url, params | self._identity, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise ToolFailure(f"PubMed: {endpoint} timed out after {self._timeout:g} s") from exc
        except TimeoutError as exc:
            raise ToolFailure("PubMed: too many searches queued at NCBI's rate limit") from exc
        except httpx.HTTPError as exc:
            # The class name only: an httpx message may quote the URL, and with it the key.
            raise ToolFailure(f"PubMed: {endpoint} failed ({type(exc).__name__})") from exc
        if response.status_code == httpx.codes.TOO_MANY_REQUESTS:
            raise ToolFailure(f"PubMed: {endpoint} is rate-limited (HTTP 429) even after waiting")
        if response.status_code >= 400:
            raise ToolFailure(f"PubMed: {endpoint} answered HTTP {response.status_code}")
        return response


def parse_efetch(xml: bytes) -> list[PubMedArticle]:
    """The articles of an efetch ``PubmedArticleSet``; book records are skipped."""
    # ElementTree never fetches the external DTD efetch names, nor any external
    # entity, and this expat (>= 2.4) refuses runaway internal entity expansion;
    # defusedxml is not a dependency, and the host is a fixed, trusted one.
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ToolFailure("PubMed: efetch gave XML that cannot be parsed") from exc
    if root.tag != "PubmedArticleSet":  # e.g. <eFetchResult><ERROR>…</ERROR></eFetchResult>
        raise ToolFailure(f"PubMed: efetch answered <{root.tag}>, not a PubmedArticleSet")
    articles = (_article(node) for node in root.iter("PubmedArticle"))
    return [a for a in articles if a is not None]


def _article(node: ET.Element) -> PubMedArticle | None:
    pmid = _text(node.find("MedlineCitation/PMID"))
    article = node.find("MedlineCitation/Article")
    if not pmid or article is None:
        return None
    # A non-English article may have an empty ArticleTitle and only a vernacular one.
    title = _text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle"))
    sections = []
    for part in article.findall("Abstract/AbstractText"):
        text, label = _text(part), part.get("Label", "").strip()
        if text:
            sections.append(f"{label}: {text}" if label else text)
    return PubMedArticle(
        pmid=pmid,
        title=title,
        abstract="\n".join(sections),
        journal=_text(article.find("Journal/Title")),
        year=_year(article.find("Journal/JournalIssue/PubDate")),
        doi=_doi(node, article),
    )


def _text(node: ET.Element | None) -> str:
    """All text inside ``node`` with inline markup (<i>, <sup>) flattened, spaces collapsed."""
    return "" if node is None else " ".join("".join(node.itertext()).split())


def _year(pub_date: ET.Element | None) -> int | None:
    if pub_date is None:
        return None
    # MedlineDate covers irregular issues: "1998 Dec-1999 Jan", "2000 Spring".
    found = _YEAR.search(_text(pub_date.find("Year")) or _text(pub_date.find("MedlineDate")))
    return int(found.group()) if found else None


def _doi(node: ET.Element, article: ET.Element) -> str | None:
    ids = [(i.get("IdType"), i) for i in node.findall("PubmedData/ArticleIdList/ArticleId")]
    # Older records may carry the DOI only as the article's electronic location.
    ids += [(e.get("EIdType"), e) for e in article.findall("ELocationID")]
    return next((_text(i) for kind, i in ids if kind == "doi" and _text(i)), None)
