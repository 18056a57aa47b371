"""PubMed over E-utilities, against hand-made esearch/efetch answers; and the shared limiter."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepresearch.errors import ToolFailure
from deepresearch.search.pubmed import PubMedSearch, parse_efetch
from deepresearch.search.ratelimit import RateLimiter, retry_after

FIXTURES = Path(__file__).parent / "fixtures"
Handler = Callable[[httpx.Request], httpx.Response]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def eutils(seen: list[httpx.Request], esearch: str = "esearch.json") -> Handler:
    """A fake E-utilities host answering from the fixtures and recording every request."""
    answers = {
        "esearch.fcgi": (esearch, "application/json"),
        "efetch.fcgi": ("efetch.xml", "text/xml"),
        "einfo.fcgi": ("einfo.json", "application/json"),
    }

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        name, kind = answers[request.url.path.rsplit("/", 1)[-1]]
        return httpx.Response(200, content=fixture(name), headers={"Content-Type": kind})

    return handle


@asynccontextmanager
async def pubmed(
    handler: Callable[[httpx.Request], Any], *, rate: float = 1000.0, **options: Any
) -> AsyncIterator[PubMedSearch]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield PubMedSearch(client, RateLimiter(rate), **options)


def endpoint(request: httpx.Request) -> str:
    return request.url.path.rsplit("/", 1)[-1]


async def test_articles_become_sources_in_esearch_order() -> None:
    async with pubmed(eutils([])) as backend:
        sources = await backend.search("artemisinin resistance", 5)

    # efetch lists 456 first; the ranking is esearch's.
    assert [s.source_id for s in sources] == ["pubmed:123", "pubmed:456"]
    structured, marked_up = sources
    assert structured.url == "https://pubmed.ncbi.nlm.nih.gov/123/"
    assert structured.year == 2021
    assert structured.title.startswith("Artemisinin resistance markers")
    assert structured.text.splitlines() == [
        "Artemisinin resistance markers in a hand-made trial: a randomized study.",
        "BACKGROUND: Partial resistance to artemisinin threatens malaria control.",
        "METHODS: We enrolled 200 adults and followed them for 42 days.",
        "RESULTS: Clearance half-life exceeded 5 h in 12% of patients.",
        "CONCLUSIONS: Markers of resistance were uncommon.",
    ]
    assert structured.snippet.startswith("BACKGROUND: Partial resistance")
    assert "\n" not in structured.snippet
    assert marked_up.year == 1998  # from <MedlineDate>1998 Dec-1999 Jan</MedlineDate>
    assert marked_up.title == (
        "Chloroquine response of Plasmodium falciparum in a hand-made cohort."
    )
    assert marked_up.text.endswith(
        "Isolates of P. falciparum from 40 patients were tested & compared;"
        " IC50 values were < 30 nM in most."
    )


def test_parsed_articles_keep_doi_and_journal() -> None:
    articles = {a.pmid: a for a in parse_efetch(fixture("efetch.xml"))}
    assert articles["123"].doi == "10.1000/handmade.123"  # ArticleIdList wins over ELocationID
    assert articles["123"].journal == "Journal of Hand-made Medicine"
    assert articles["456"].doi is None
    assert articles["456"].journal == "Journal of Hand-made Tropical Examples"


def test_doi_falls_back_to_elocation_and_books_are_skipped() -> None:
    xml = b"""<PubmedArticleSet>
      <PubmedArticle><MedlineCitation><PMID>7</PMID><Article>
        <ArticleTitle></ArticleTitle><VernacularTitle>Titre</VernacularTitle>
        <ELocationID EIdType="pii">S0000</ELocationID>
        <ELocationID EIdType="doi">10.1/seven</ELocationID>
      </Article></MedlineCitation></PubmedArticle>
      <PubmedBookArticle><BookDocument><PMID>8</PMID></BookDocument></PubmedBookArticle>
    </PubmedArticleSet>"""
    [article] = parse_efetch(xml)
    assert (article.pmid, article.title, article.doi, article.year) == (
        "7",
        "Titre",
        "10.1/seven",
        None,
    )
    assert article.to_source().text == "Titre"


async def test_every_request_carries_identity_and_the_documented_parameters() -> None:
    seen: list[httpx.Request] = []
    async with pubmed(eutils(seen), api_key="k3y", email="ops@example.org", tool="dr") as backend:
        await backend.search("artemisinin resistance", 5)

    assert [endpoint(r) for r in seen] == ["esearch.fcgi", "efetch.fcgi"]
    for request in seen:
        assert request.url.host == "eutils.ncbi.nlm.nih.gov"
        assert request.url.params["tool"] == "dr"
        assert request.url.params["email"] == "ops@example.org"
        assert request.url.params["api_key"] == "k3y"
    esearch, efetch = (dict(r.url.params) for r in seen)
    assert esearch == {
        "db": "pubmed", "term": "artemisinin resistance", "retmax": "5", "retmode": "json",
        "sort": "relevance", "tool": "dr", "email": "ops@example.org", "api_key": "k3y",
    }  # fmt: skip
    assert (efetch["db"], efetch["id"], efetch["retmode"], efetch["rettype"]) == (
        "pubmed", "123,456", "xml", "abstract",
    )  # fmt: skip


async def test_unset_email_and_key_are_not_sent() -> None:
    seen: list[httpx.Request] = []
    async with pubmed(eutils(seen)) as backend:
        await backend.search("malaria", 2)
    for request in seen:
        assert request.url.params["tool"] == "deepresearch"
        assert "email" not in request.url.params and "api_key" not in request.url.params


async def test_no_hits_is_an_empty_list_without_efetch() -> None:
    seen: list[httpx.Request] = []
    async with pubmed(eutils(seen, esearch="esearch_empty.json")) as backend:
        assert await backend.search("zzqxnonexistentterm", 5) == []
    assert [endpoint(r) for r in seen] == ["esearch.fcgi"]


async def test_a_429_is_waited_out_once_then_retried() -> None:
    seen: list[httpx.Request] = []
    answer = eutils(seen)
    refused = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        if endpoint(request) == "esearch.fcgi" and not refused:
            refused += 1
            seen.append(request)
            body = b'{"error":"API rate limit exceeded","count":"4","limit":"3"}'
            return httpx.Response(429, content=body, headers={"Retry-After": "0"})
        return answer(request)

    async with pubmed(handle) as backend:
        sources = await backend.search("malaria", 5)
    assert [endpoint(r) for r in seen] == ["esearch.fcgi", "esearch.fcgi", "efetch.fcgi"]
    assert len(sources) == 2


async def test_a_second_429_fails_the_search() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "0"})

    async with pubmed(handle) as backend:
        with pytest.raises(ToolFailure, match=r"PubMed.*429"):
            await backend.search("malaria", 5)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(500, text="Internal Server Error"), "PubMed: esearch answered HTTP 500"),
        (httpx.Response(200, text="<html>maintenance</html>"), "PubMed: esearch .* not JSON"),
        (httpx.Response(200, json={"esearchresult": {"ERROR": "Empty term"}}), "Empty term"),
        (httpx.Response(200, json={"header": {}}), "PubMed: .*esearchresult"),
    ],
)
async def test_a_failing_esearch_is_a_tool_failure(answer: httpx.Response, message: str) -> None:
    async with pubmed(lambda request: answer) as backend:
        with pytest.raises(ToolFailure, match=message):
            await backend.search("malaria", 5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<PubmedArticleSet><PubmedArticle>", "cannot be parsed"),
        (b"<eFetchResult><ERROR>Empty id list</ERROR></eFetchResult>", "eFetchResult"),
    ],
)
async def test_an_unreadable_efetch_is_a_tool_failure(body: bytes, message: str) -> None:
    answer = eutils([])

    def handle(request: httpx.Request) -> httpx.Response:
        if endpoint(request) == "efetch.fcgi":
            return httpx.Response(200, content=body)
        return answer(request)

    async with pubmed(handle) as backend:
        with pytest.raises(ToolFailure, match=f"PubMed: efetch.*{message}"):
            await backend.search("malaria", 5)


async def test_a_timeout_is_a_tool_failure_that_does_not_leak_the_key() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"timed out reading {request.url}", request=request)

    async with pubmed(handle, api_key="s3cret", timeout=2.5) as backend:
        with pytest.raises(ToolFailure, match=r"PubMed: esearch timed out after 2\.5 s") as fail:
            await backend.search("malaria", 5)
    assert "s3cret" not in str(fail.value)


class StampedLimiter(RateLimiter):
    """The real limiter, noting the loop time of each turn it grants."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.granted: list[float] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.granted.append(asyncio.get_running_loop().time())


async def test_concurrent_searches_are_spaced_by_the_shared_limiter() -> None:
    # The turns are stamped where they are granted, not where the fake host sees the
    # request: a loaded machine may delay a request after its turn, which says nothing
    # about the limiter's spacing.
    limiter = StampedLimiter(10.0)
    turns_before_request: list[int] = []
    answer = eutils([])

    def handle(request: httpx.Request) -> httpx.Response:
        turns_before_request.append(len(limiter.granted))
        return answer(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        backend = PubMedSearch(client, limiter)
        results = await asyncio.gather(*(backend.search(f"q{n}", 2) for n in range(3)))

    assert all(len(r) == 2 for r in results)
    assert len(turns_before_request) == len(limiter.granted) == 6  # a turn per request
    assert all(turns > n for n, turns in enumerate(turns_before_request))  # each after one
    gaps = [later - earlier for earlier, later in itertools.pairwise(limiter.granted)]
    assert min(gaps) >= 0.1 - 1e-3, gaps


async def test_probe_reports_whether_eutils_answers() -> None:
    seen: list[httpx.Request] = []
    async with pubmed(eutils(seen), email="ops@example.org") as backend:
        assert await backend.probe(timeout=30) is True
    assert endpoint(seen[0]) == "einfo.fcgi"
    assert dict(seen[0].url.params) == {
        "db": "pubmed", "retmode": "json", "tool": "deepresearch", "email": "ops@example.org",
    }  # fmt: skip

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Network is unreachable", request=request)

    for handler in (stall, refuse, lambda request: httpx.Response(503)):
        async with pubmed(handler) as backend:
            assert await backend.probe(timeout=0.05) is False


# -- the limiter itself --


async def test_limiter_spaces_acquisitions() -> None:
    limiter = RateLimiter(20.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(7):
        await limiter.acquire()
    assert loop.time() - started >= 0.3 - 1e-3  # the first goes at once, six gaps of 50 ms


async def test_limiter_grants_turns_first_come_first_served() -> None:
    limiter = RateLimiter(200.0)
    order: list[int] = []

    async def take(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    await asyncio.gather(*(take(n) for n in range(8)))
    assert order == list(range(8))


async def test_a_cancelled_waiter_does_not_jam_the_limiter() -> None:
    limiter = RateLimiter(5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(limiter.acquire(), timeout=5)  # the lock was released
    assert loop.time() - started >= 0.2 - 1e-3  # and the spacing still holds


async def test_pause_holds_every_caller_back() -> None:
    limiter = RateLimiter(1000.0)
    loop = asyncio.get_running_loop()
    limiter.pause(0.2)
    started = loop.time()
    await limiter.acquire()
    assert loop.time() - started >= 0.2 - 1e-3


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_limiter_needs_a_positive_finite_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 1.0),
        ("2", 2.0),
        ("120", 5.0),
        ("-3", 0.0),
        ("soon", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date long past
        ("Fri, 01 Jan 20xx 00:00:00 GMT", 1.0),  # unreadable date
    ],
)
def test_retry_after_is_read_and_capped(header: str | None, expected: float) -> None:
    headers = {} if header is None else {"Retry-After": header}
    assert retry_after(httpx.Response(429, headers=headers)) == expected


async def test_a_turn_that_would_come_too_late_fails_the_search() -> None:
    # At 1 request/s the efetch waits a second behind the esearch: past the 50 ms budget.
    async with pubmed(eutils([]), rate=1.0, timeout=0.05) as backend:
        with pytest.raises(ToolFailure, match="PubMed: too many searches queued"):
            await backend.search("malaria", 5)
