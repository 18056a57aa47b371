"""Fetching one web page the model asked for, safely, and reading its text."""

from __future__ import annotations

import asyncio
import html
import re
import zlib
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
import httpx
import trafilatura

from deepresearch.errors import ToolFailure
from deepresearch.tools.netguard import Resolver, check_url

MAX_REDIRECTS = 5
HEADERS = {
    "User-Agent": "deepresearch/0.1 (medical-evidence research; visit tool)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1",
    # Only what _read_capped can inflate within its cap.
    "Accept-Encoding": "gzip, deflate",
}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_OTHER_TEXT_TYPES = {"application/json", "application/xml"}
_SNIFF_BYTES = 1024

Kind = Literal["html", "text"]


@dataclass(frozen=True)
class Page:
    url: str  # where the redirects ended
    title: str  # "" when the page has none
    text: str
    truncated: bool  # the body was over the byte limit and only its start was read


@dataclass(frozen=True)
class _Body:
    url: str
    kind: Kind
    charset: str | None
    data: bytes
    truncated: bool


async def fetch_page(
    client: httpx.AsyncClient, url: str, *, resolve: Resolver, timeout: float, max_bytes: int
) -> Page:
    """GET ``url`` (checked, redirects checked hop by hop) and extract its text."""
    try:
        # httpx's timeout bounds each read; this bounds the whole visit, so a server
        # that drips one byte at a time cannot hold the tool open.
        async with asyncio.timeout(timeout):
            body = await _get(client, url, resolve, timeout, max_bytes)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ToolFailure(f"timed out after {timeout:g} s") from exc
    except httpx.InvalidURL as exc:  # e.g. a malformed Location header
        raise ToolFailure(f"bad redirect ({exc})") from exc
    except httpx.HTTPError as exc:
        raise ToolFailure(f"could not fetch it ({type(exc).__name__}: {exc})") from exc
    text = _decode(body.data, body.charset)
    if body.kind == "html":
        # trafilatura parses with lxml: seconds of CPU on a big page, so not on the loop.
        title, text = await anyio.to_thread.run_sync(extract_html, text)
    else:
        title = ""
    return Page(url=body.url, title=title, text=text.strip(), truncated=body.truncated)


async def _get(
    client: httpx.AsyncClient, url: str, resolve: Resolver, timeout: float, max_bytes: int
) -> _Body:
    # Redirects are followed here, not by httpx, so each Location is checked
    # before anything is sent to it.
    for _ in range(MAX_REDIRECTS + 1):
        await check_url(url, resolve)
        request = client.build_request("GET", url, headers=HEADERS, timeout=timeout)
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            if response.has_redirect_location:
                url = str(response.url.join(response.headers["Location"]))
                continue
            if response.status_code >= 300:
                raise ToolFailure(f"the server answered HTTP {response.status_code}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            kind = _kind_of(content_type)
            if content_type and kind is None:  # refused before reading a byte of it
                raise ToolFailure(f"unsupported content type {content_type}")
            data, truncated = await _read_capped(response, max_bytes)
            kind = kind or _sniff(data)
            if kind is None:
                raise ToolFailure("unsupported content type (binary data)")
            return _Body(str(response.url), kind, response.charset_encoding, data, truncated)
        finally:
            await response.aclose()
    raise ToolFailure(f"more than {MAX_REDIRECTS} redirects")


def _kind_of(content_type: str) -> Kind | None:
    if content_type in _HTML_TYPES:
        return "html"
    if (
        content_type.startswith("text/")
        or content_type in _OTHER_TEXT_TYPES
        or content_type.endswith(("+xml", "+json"))
    ):
        return "text"
    return None


def _sniff(data: bytes) -> Kind | None:
    """The kind of a body sent without a Content-Type."""
    head = data[:_SNIFF_BYTES].lower()
    if b"\x00" in head or head.startswith(b"%pdf"):
        return None
    return "html" if b"<html" in head or b"<!doctype html" in head else "text"


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the decoded body, and whether there was more.

    The cap applies after decompression, inside it: a small gzip body can inflate
    a thousandfold, so the raw stream is inflated here with a bound on the output
    rather than by httpx, which would inflate each chunk whole first.
    """
    if response.is_stream_consumed:  # built in memory (as by a mock): already decoded
        return response.content[:max_bytes], len(response.content) > max_bytes
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflate: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflate = zlib.decompressobj()
    elif encoding in ("", "identity"):
        inflate = None
    else:
        raise ToolFailure(f"unsupported content encoding {encoding!r}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            room = max_bytes - size
            data = inflate.decompress(raw, room) if inflate is not None else raw[:room]
            chunks.append(data)
            size += len(data)
            more = inflate.unconsumed_tail if inflate is not None else raw[room:]
            if more or size >= max_bytes:
                return b"".join(chunks), True
    except zlib.error as exc:
        raise ToolFailure(f"the page's {encoding} body is corrupt") from exc
    return b"".join(chunks), False


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return data.decode("utf-8", errors="replace")


_INVISIBLE = frozenset({"head", "title", "script", "style", "noscript", "template", "svg"})
# The crude fallback reads at most this much; it is linear, but pure Python.
FALLBACK_CHARS = 2_000_000
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def extract_html(page: str) -> tuple[str, str]:
    """``(title, main text)`` of an HTML page; blocking, run it in a worker thread."""
    text = trafilatura.extract(page, include_comments=False, include_tables=True)
    if not text:  # trafilatura found no main content: keep every visible word instead
        text = strip_tags(page)
    metadata = trafilatura.extract_metadata(page)
    title = metadata.title if metadata is not None and metadata.title else None
    if not title:
        title = html_title(page)
    return title.strip(), text


def strip_tags(page: str) -> str:
    """A crude text version of HTML: drop scripts, styles and tags, keep the words.

    A scanner built on ``str.find`` that only ever moves forward, so it is linear
    in the page's size. Regular expressions like ``<script.*?</script>`` (and
    ``html.parser`` too) rescan to the end for every unclosed tag: a page of many
    unclosed tags then costs time quadratic in its size, holding the GIL and
    stalling the whole server.
    """
    page = page[:FALLBACK_CHARS]
    lower = page.lower()
    parts: list[str] = []
    at = 0
    while at < len(page):
        start = page.find("<", at)
        if start == -1:
            parts.append(page[at:])
            break
        parts.append(page[at:start])
        if page.startswith("<!--", start):
            end = page.find("-->", start + 4)
            at = len(page) if end == -1 else end + 3
            continue
        end = page.find(">", start + 1)
        if end == -1:
            break  # an unclosed tag: the rest is markup
        name = _tag_name(lower, start + 1, end)
        at = end + 1
        if name in _INVISIBLE:
            close = lower.find(f"</{name}", at)
            if close == -1:
                break  # never closed: the rest is invisible
            close_end = page.find(">", close)
            at = len(page) if close_end == -1 else close_end + 1
        parts.append(" ")
    return _collapse(html.unescape("".join(parts)))


def html_title(page: str) -> str:
    """The ``<title>``'s text, found by the same forward-only scanning."""
    lower = page[:FALLBACK_CHARS].lower()
    start = lower.find("<title")
    end = lower.find(">", start) if start != -1 else -1
    close = lower.find("</title", end) if end != -1 else -1
    if close == -1:
        return ""
    return _collapse(html.unescape(page[end + 1 : close]))


def _tag_name(lower: str, start: int, end: int) -> str:
    words = lower[start:end].split(None, 1)
    return words[0].strip("/") if words else ""


def _collapse(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
