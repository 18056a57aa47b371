"""The visit tool: guarded fetching, extraction, citations and goal-directed reading.

Pages are served by ``httpx.MockTransport`` and names resolve through a stub, so
nothing leaves the process; the handler records every request it was sent,
which is how the tests prove a refused URL was never requested.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from deepresearch.errors import BackendError, ToolFailure
from deepresearch.llm.pool import BackendPool
from deepresearch.tools.base import Source, ToolContext
from deepresearch.tools.visit import VisitTool, parse_extraction
from tests.support import ScriptedModel

ARTICLE = """<!doctype html>
<html><head><title>Metformin &amp; diabetes | Example Health</title>
<script>window.secretTracker = "do-not-show";</script>
<style>body { color: red }</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article>
<h1>Metformin in type 2 diabetes</h1>
<p>Metformin remains the first-line pharmacological therapy for most adults with type 2
diabetes. In randomised trials it lowered HbA1c by about one percentage point compared with
placebo, without causing weight gain or hypoglycaemia when used alone.</p>
<p>Gastrointestinal side effects are the most common reason for stopping treatment; they are
reduced by starting at a low dose and titrating slowly, or by an extended-release form.</p>
<p>Metformin should not be started when the eGFR is below 30 mL/min/1.73 m2, and the dose
should be reviewed when the eGFR falls below 45 mL/min/1.73 m2.</p>
</article>
<footer>Copyright 2024 Example Health</footer>
</body></html>"""

HTML = {"Content-Type": "text/html; charset=utf-8"}
GOAL = "first-line therapy for type 2 diabetes"

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class StubResolver:
    table = {
        "public.example": ["93.184.216.34"],
        "other.example": ["93.184.216.35"],
        "internal.example": ["10.0.0.1"],
    }

    async def __call__(self, host: str, port: int) -> list[str]:
        return self.table.get(host, [])


class Site:
    """The mock web: routes by URL, records every request that reached it."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.requested: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requested.append(url)
        handler = self.routes.get(url)
        if handler is None:
            return httpx.Response(404, text="not found")
        response = handler(request)
        return await response if isinstance(response, Awaitable) else response


def page(body: str = ARTICLE, headers: dict[str, str] = HTML) -> Handler:
    return lambda request: httpx.Response(200, headers=headers, text=body)


def redirect(location: str, status: int = 302) -> Handler:
    return lambda request: httpx.Response(status, headers={"Location": location})


class FakeIndex:
    def __init__(self, *sources: Source) -> None:
        self.sources = {source.source_id: source for source in sources}

    async def get(self, source_id: str) -> Source | None:
        return self.sources.get(source_id)


def make_tool(site: Site, **options: Any) -> VisitTool:
    client = httpx.AsyncClient(transport=httpx.MockTransport(site))
    return VisitTool(client, resolver=StubResolver(), **options)


async def visit(tool: VisitTool, *urls: str, context: ToolContext | None = None) -> Any:
    return await tool.call({"url": list(urls), "goal": GOAL}, context or ToolContext("s"))


async def test_an_html_page_is_extracted_numbered_and_cited() -> None:
    site = Site({"http://public.example/article": page()})
    context = ToolContext("s")
    output = await visit(make_tool(site), "http://public.example/article", context=context)

    assert output.text.startswith(
        "[1] Metformin in type 2 diabetes (http://public.example/article)"
    )
    assert "lowered HbA1c by about one percentage point" in output.text
    assert "secretTracker" not in output.text
    assert "color: red" not in output.text
    assert output.summary == "1 page(s) read"
    (source,) = output.sources
    assert source.source_id == source.url == "http://public.example/article"
    assert source.title == "Metformin in type 2 diabetes"  # trafilatura prefers the <h1>
    assert source.snippet and source.snippet in source.text
    assert context.citations.get(1) == source

    # The same page in a later call keeps its number.
    again = await visit(make_tool(site), "http://public.example/article", context=context)
    assert again.text.startswith("[1] ")


async def test_a_string_url_is_accepted_and_a_missing_scheme_means_https() -> None:
    site = Site({"https://public.example/article": page()})
    output = await make_tool(site).call(
        {"url": "public.example/article", "goal": GOAL}, ToolContext("s")
    )
    assert output.sources[0].url == "https://public.example/article"


@pytest.mark.parametrize(
    "arguments",
    [{"goal": GOAL}, {"url": 5, "goal": GOAL}, {"url": ["ok", 3], "goal": GOAL}, {"url": ["x"]}],
)
async def test_bad_arguments_are_reported_to_the_model(arguments: dict[str, Any]) -> None:
    site = Site({})
    with pytest.raises(ToolFailure, match="visit needs"):
        await make_tool(site).call(arguments, ToolContext("s"))
    assert site.requested == []


@pytest.mark.parametrize(
    "target", ["http://127.0.0.1/admin", "http://internal.example/", "http://[::1]/", "file:///x"]
)
async def test_a_redirect_to_a_private_target_is_refused_before_it_is_requested(
    target: str,
) -> None:
    site = Site(
        {
            "http://public.example/go": redirect(target),
            "http://public.example/article": page(),
        }
    )
    output = await visit(
        make_tool(site), "http://public.example/go", "http://public.example/article"
    )

    assert site.requested == ["http://public.example/go", "http://public.example/article"]
    assert "http://public.example/go could not be read: refusing to visit" in output.text
    assert output.summary == "1 page(s) read, 1 failed"
    assert [s.url for s in output.sources] == ["http://public.example/article"]


async def test_redirects_to_public_pages_are_followed_relative_and_absolute() -> None:
    site = Site(
        {
            "http://public.example/old": redirect("/moved", 301),
            "http://public.example/moved": redirect("https://other.example/final", 307),
            "https://other.example/final": page(),
        }
    )
    output = await visit(make_tool(site), "http://public.example/old")
    assert site.requested == [
        "http://public.example/old",
        "http://public.example/moved",
        "https://other.example/final",
    ]
    assert output.sources[0].source_id == "https://other.example/final"
    assert "(https://other.example/final)" in output.text


async def test_a_redirect_loop_stops_after_five_hops() -> None:
    site = Site({"http://public.example/loop": redirect("/loop")})
    with pytest.raises(ToolFailure, match="more than 5 redirects"):
        await visit(make_tool(site), "http://public.example/loop")
    assert len(site.requested) == 6


async def test_a_body_over_the_byte_limit_is_cut_without_reading_the_rest() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1
            yield b"Metformin is first-line therapy. " * 32  # about 1 kB

    site = Site(
        {
            "http://public.example/huge": lambda request: httpx.Response(
                200, headers={"Content-Type": "text/plain"}, content=endless()
            )
        }
    )
    output = await visit(make_tool(site, max_bytes=10_000), "http://public.example/huge")
    assert "Only the first 10000 bytes of the page were read." in output.text
    assert len(output.sources[0].text) <= 10_000
    assert sent <= 11  # stopped at the limit, not at the end of an endless body


async def test_unsupported_content_types_are_refused_per_url_unread() -> None:
    read = False

    async def pdf() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield b"%PDF-1.7 ..."

    site = Site(
        {
            "http://public.example/paper.pdf": lambda request: httpx.Response(
                200, headers={"Content-Type": "application/pdf"}, content=pdf()
            ),
            "http://public.example/article": page(),
        }
    )
    output = await visit(
        make_tool(site), "http://public.example/paper.pdf", "http://public.example/article"
    )
    assert (
        "http://public.example/paper.pdf could not be read: unsupported content type "
        "application/pdf" in output.text
    )
    assert output.summary == "1 page(s) read, 1 failed"
    assert not read


async def test_http_errors_and_timeouts_are_per_url_errors() -> None:
    def times_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    site = Site({"http://public.example/slow": times_out, "http://public.example/article": page()})
    output = await visit(
        make_tool(site, timeout=5),
        "http://public.example/slow",
        "http://public.example/missing",
        "http://public.example/article",
    )
    assert "http://public.example/slow could not be read: timed out after 5 s" in output.text
    assert "http://public.example/missing could not be read: the server answered HTTP 404" in (
        output.text
    )
    assert output.summary == "1 page(s) read, 2 failed"


async def test_the_whole_visit_has_a_deadline() -> None:
    async def stalls(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("the deadline should have cancelled this")

    site = Site({"http://public.example/stall": stalls, "http://public.example/article": page()})
    output = await visit(
        make_tool(site, timeout=0.2), "http://public.example/stall", "http://public.example/article"
    )
    assert "timed out after 0.2 s" in output.text


async def test_when_every_url_fails_the_call_fails_with_every_reason() -> None:
    site = Site({"http://public.example/go": redirect("http://169.254.169.254/latest/meta-data/")})
    with pytest.raises(ToolFailure) as failure:
        await visit(make_tool(site), "http://public.example/go", "http://localhost:8080/")
    message = str(failure.value)
    assert message.startswith("no page could be read")
    assert "http://public.example/go: refusing to visit 169.254.169.254" in message
    assert "http://localhost:8080/: refusing to visit localhost" in message
    assert site.requested == ["http://public.example/go"]


async def test_only_max_urls_are_visited() -> None:
    site = Site({f"http://public.example/{n}": page() for n in range(4)})
    output = await visit(
        make_tool(site, max_urls=2), *(f"http://public.example/{n}" for n in range(4))
    )
    assert sorted(site.requested) == ["http://public.example/0", "http://public.example/1"]
    assert "Only the first 2 URLs were visited." in output.text


async def test_local_corpus_ids_come_from_the_index() -> None:
    record = Source(
        source_id="pubmed:123",
        title="Metformin trial",
        url="https://pubmed.ncbi.nlm.nih.gov/123/",
        text="Metformin lowered HbA1c in adults with type 2 diabetes.",
        year=2020,
    )
    site = Site({})
    tool = make_tool(site, index=FakeIndex(record))
    output = await visit(tool, "pubmed:123", "medquad:unknown-1")

    assert site.requested == []
    assert output.text.startswith(
        "[1] Metformin trial (https://pubmed.ncbi.nlm.nih.gov/123/)\nMetformin lowered HbA1c"
    )
    assert "medquad:unknown-1 could not be read: not in the local index" in output.text
    assert output.sources[0].source_id == "pubmed:123"
    assert output.sources[0].year == 2020

    with pytest.raises(ToolFailure, match="not in the local index"):
        await visit(make_tool(site), "pubmed:123")  # no index at all


async def test_a_model_reads_the_page_for_the_goal() -> None:
    reply = "```json\n" + json.dumps(
        {
            "rational": "The article states the first-line therapy.",
            "evidence": "Metformin remains the first-line pharmacological therapy.",
            "summary": "Metformin is first-line for type 2 diabetes.",
        }
    )
    model = ScriptedModel(["<think>reading</think>" + reply + "\n```"])
    site = Site({"http://public.example/article": page()})
    output = await visit(make_tool(site, model=model), "http://public.example/article")

    assert output.text == (
        f"The useful information in [1] http://public.example/article for user goal {GOAL} as "
        "follows: \n\nEvidence in page: \nMetformin remains the first-line pharmacological "
        "therapy.\n\nSummary: \nMetformin is first-line for type 2 diabetes.\n\n"
    )
    (prompt,) = model.calls
    assert GOAL in prompt[0]["content"]
    assert "lowered HbA1c by about one percentage point" in prompt[0]["content"]
    assert output.sources[0].snippet == "Metformin is first-line for type 2 diabetes."


async def test_a_reply_that_is_not_json_becomes_the_summary() -> None:
    model = ScriptedModel(["Metformin is first-line; {not json"])
    site = Site({"http://public.example/article": page()})
    output = await visit(make_tool(site, model=model), "http://public.example/article")
    assert "Summary: \nMetformin is first-line; {not json\n\n" in output.text


async def test_a_failing_model_falls_back_to_the_raw_text() -> None:
    model = ScriptedModel([BackendError("backend down")])
    site = Site({"http://public.example/article": page()})
    output = await visit(make_tool(site, model=model), "http://public.example/article")
    assert output.text.startswith("[1] Metformin in type 2 diabetes")
    assert "lowered HbA1c" in output.text


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"evidence": "E", "summary": "S"}', ("E", "S")),
        ('```json\n{"evidence": ["a", "b"], "summary": "S"}\n```', ("a\nb", "S")),
        ('Here: {"rational": "r", "summary": "S"} done', ("", "S")),
        ("[1, 2]", ("", "[1, 2]")),
        ('{"other": 1}', ("", '{"other": 1}')),
    ],
)
def test_parse_extraction(reply: str, expected: tuple[str, str]) -> None:
    assert parse_extraction(reply) == expected


async def test_pages_without_a_content_type_are_sniffed() -> None:
    site = Site(
        {
            "http://public.example/page": lambda request: httpx.Response(
                200, content=ARTICLE.encode()
            ),
            "http://public.example/blob": lambda request: httpx.Response(
                200, content=b"\x00\x01\x02binary"
            ),
        }
    )
    output = await visit(
        make_tool(site), "http://public.example/page", "http://public.example/blob"
    )
    assert "lowered HbA1c" in output.text
    assert "could not be read: unsupported content type (binary data)" in output.text


async def test_text_falls_back_to_stripped_tags_when_trafilatura_finds_nothing() -> None:
    # trafilatura discards a page whose only text is a footer; the crude strip keeps it.
    bare = (
        "<html><head><title>A &amp; B</title><style>p {}</style></head><body><footer>Only "
        "<b>footer</b> text &lt;here&gt;</footer><!-- hidden --><script>x()</script></body></html>"
    )
    site = Site({"http://public.example/bare": page(bare)})
    output = await visit(make_tool(site), "http://public.example/bare")
    assert output.text == "[1] A & B (http://public.example/bare)\nOnly footer text <here>"


async def test_a_page_with_no_text_at_all_is_a_per_url_error() -> None:
    site = Site(
        {"http://public.example/empty": page("<html><body><script>x()</script></body></html>")}
    )
    with pytest.raises(ToolFailure, match="no readable text"):
        await visit(make_tool(site), "http://public.example/empty")


def test_pages_of_unclosed_tags_are_read_in_one_forward_pass() -> None:
    from deepresearch.tools.pages import extract_html, strip_tags

    # Regex or html.parser stripping is quadratic on these shapes: seconds at 80 KB,
    # hours at these sizes (the suite's timeout would end this test), all on the GIL.
    for hostile in ("<svg " * 400_000, "<svg>" * 400_000, "<!--" * 400_000):
        assert strip_tags(hostile) == ""
        assert extract_html(hostile[:200_000]) == ("", "")
    assert strip_tags("<a>x" * 400_000) == " ".join(["x"] * 400_000)
    assert strip_tags("<p>Hi <b>there</b><script>x()</script><svg><text>no</text></svg>!") == (
        "Hi there !"
    )


class GzipStream(httpx.AsyncByteStream):
    """A gzip body arriving in network-sized pieces, as a real response streams."""

    def __init__(self, data: bytes) -> None:
        self._data = gzip.compress(data)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), 65536):
            yield self._data[start : start + 65536]


async def test_the_size_cap_holds_inside_decompression() -> None:
    from deepresearch.tools.pages import _read_capped

    bomb = b"<html><body><p>" + b"a" * 50_000_000 + b"</p></body></html>"
    headers = {"Content-Type": "text/html", "Content-Encoding": "gzip"}
    response = httpx.Response(200, headers=headers, stream=GzipStream(bomb))
    data, truncated = await _read_capped(response, 100_000)
    assert truncated and len(data) == 100_000 and data.startswith(b"<html><body><p>aaa")

    small = httpx.Response(200, headers=headers, stream=GzipStream(b"<p>hello</p>"))
    assert await _read_capped(small, 100_000) == (b"<p>hello</p>", False)


async def test_five_pages_under_a_backend_limit_of_two_never_have_more_than_two_calls() -> None:
    in_flight, most = 0, 0
    release = asyncio.Event()

    class Reader(ScriptedModel):
        async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[str, None]:
            nonlocal in_flight, most
            self.contexts.append(kwargs["call"])
            in_flight += 1
            most = max(most, in_flight)
            await release.wait()
            in_flight -= 1
            yield '{"evidence": "e", "summary": "s"}'

    reader = Reader([])
    pool = BackendPool([reader], limit=2)
    urls = [f"http://public.example/{n}" for n in range(5)]
    site = Site({url: page() for url in urls})
    call = asyncio.create_task(visit(make_tool(site, model=pool), *urls))
    for _ in range(10_000):  # loop turns: every page is fetched, then waits to be read
        if pool.backends[0].limiter.waiting == 3:
            break
        await asyncio.sleep(0)
    assert pool.backends[0].limiter.waiting == 3 and pool.backends[0].limiter.in_flight == 2
    release.set()
    output = await call
    assert most == 2 and len(output.sources) == 5
    assert {(c.session_id, c.purpose) for c in reader.contexts} == {("s", "summary")}
