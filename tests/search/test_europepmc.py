"""Europe PMC's REST search, against hand-made ``resultType=core`` answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepresearch.errors import ToolFailure
from deepresearch.search.europepmc import EuropePMCSearch, parse_results
from deepresearch.search.ratelimit import RateLimiter

FIXTURES = Path(__file__).parent / "fixtures"


def answer(name: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=(FIXTURES / name).read_bytes(),
        headers={"Content-Type": "application/json;charset=UTF-8"},
    )


@asynccontextmanager
async def europepmc(
    handler: Callable[[httpx.Request], Any], limiter: RateLimiter | None = None, **options: Any
) -> AsyncIterator[EuropePMCSearch]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield EuropePMCSearch(client, limiter, **options)


async def test_records_become_sources_with_merge_friendly_ids() -> None:
    async with europepmc(lambda request: answer("europepmc_core.json")) as backend:
        med, pmc, preprint = await backend.search("artemisinin resistance", 3)

    # A PMID makes it the corpus's and PubMed's article: same id, same URL.
    assert (med.source_id, med.url, med.year) == (
        "pubmed:123",
        "https://pubmed.ncbi.nlm.nih.gov/123/",
        2021,
    )
    assert med.text.splitlines() == [
        "Artemisinin resistance markers in a hand-made trial: a randomized study.",
        "Background: Partial resistance to artemisinin threatens malaria control.",
        "Methods: We enrolled 200 adults.",
        "Results: Clearance half-life exceeded 5 h in 12% of patients.",
        "Conclusions: Markers of resistance were uncommon.",
    ]
    assert med.snippet.startswith("Background: Partial resistance")

    assert (pmc.source_id, pmc.url, pmc.year) == (
        "pmc:PMC8888888",
        "https://europepmc.org/article/PMC/PMC8888888",
        2020,
    )
    assert pmc.title == "Mosquito net use & Anopheles biting in a hand-made village survey"
    assert pmc.text.splitlines()[1:] == [
        "Bed nets reduced bites by half.",
        "Use was lower in the dry season.",
    ]

    assert (preprint.source_id, preprint.url, preprint.year) == (
        "doi:10.1101/2023.01.01.000001",
        "https://europepmc.org/article/PPR/PPR123456",
        2023,
    )
    assert preprint.text == (
        "A hand-made preprint on kelch13 mutations\nWe sequenced kelch13 in 50 isolates."
    )


def test_a_record_without_any_shared_id_keeps_its_europe_pmc_one() -> None:
    payload = {"resultList": {"result": [{"id": "EP1", "source": "ETH", "title": "A thesis"}]}}
    [source] = parse_results(payload)
    assert (source.source_id, source.url) == (
        "europepmc:ETH:EP1",
        "https://europepmc.org/article/ETH/EP1",
    )
    assert (source.text, source.snippet, source.year) == ("A thesis", "", None)


async def test_the_request_asks_for_core_json_of_limit_results() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer("europepmc_core.json")

    async with europepmc(handle) as backend:
        await backend.search("artemisinin resistance", 3)

    [request] = seen
    assert str(request.url.copy_with(query=None)) == (
        "https://www.ebi.ac.uk/europepmc/webservices/rest/search"
    )
    assert dict(request.url.params) == {
        "query": "artemisinin resistance",
        "format": "json",
        "resultType": "core",
        "pageSize": "3",
    }


async def test_no_hits_is_an_empty_list() -> None:
    async with europepmc(lambda request: answer("europepmc_empty.json")) as backend:
        assert await backend.search("zzqxnonexistentterm", 5) == []


def timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda request: httpx.Response(500), "Europe PMC: search answered HTTP 500"),
        (timeout, "Europe PMC: search timed out after 10 s"),
        (lambda request: httpx.Response(200, text="<html>"), "Europe PMC: unreadable"),
        (lambda request: httpx.Response(200, json={"hitCount": 0}), "Europe PMC: unreadable"),
    ],
)
async def test_failures_are_tool_failures(
    handler: Callable[[httpx.Request], httpx.Response], message: str
) -> None:
    async with europepmc(handler) as backend:
        with pytest.raises(ToolFailure, match=message):
            await backend.search("malaria", 5)


async def test_a_429_is_waited_out_once_through_the_limiter() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return answer("europepmc_core.json")

    async with europepmc(handle, RateLimiter(100.0)) as backend:
        assert len(await backend.search("malaria", 3)) == 3
    assert calls == 2


async def test_probe_reports_whether_europe_pmc_answers() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer("europepmc_core.json")

    async with europepmc(handle) as backend:
        assert await backend.probe(timeout=30) is True
    assert seen[0].url.params["query"] == "malaria"
    assert seen[0].url.params["pageSize"] == "1"

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    for handler in (stall, timeout, lambda request: httpx.Response(502)):
        async with europepmc(handler) as backend:
            assert await backend.probe(timeout=0.05) is False


async def test_a_turn_that_would_come_too_late_fails_the_search() -> None:
    limiter = RateLimiter(1.0)
    await limiter.acquire()  # another session's request: the next turn is a second away
    async with europepmc(lambda request: answer("europepmc_core.json"), limiter, timeout=0.05) as b:
        with pytest.raises(ToolFailure, match="Europe PMC: too many searches"):
            await b.search("malaria", 3)
