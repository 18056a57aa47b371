"""``visit``: read web pages or local evidence records for a goal, and cite them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError, ToolFailure
from deepresearch.llm.base import CallContext, ChatModel, Message, StartOver
from deepresearch.search.results import SearchResult
from deepresearch.tools.base import Source, ToolContext, ToolOutput
from deepresearch.tools.netguard import Resolver, system_resolver
from deepresearch.tools.pages import fetch_page

# Upstream Tongyi's EXTRACTOR prompt, in substance: the goal-directed reading the
# model expects a visit to have done.
EXTRACTOR_PROMPT = """Please process the following webpage content and user goal to extract \
relevant information:

## **Webpage Content**
{content}

## **User Goal**
{goal}

## **Task Guidelines**
1. **Content Scanning for Rational**: Locate the **specific sections/data** directly related \
to the user's goal within the webpage content.
2. **Key Extraction for Evidence**: Identify and extract the **most relevant information** \
from the content; never miss important information, and quote the **full original context** \
as far as possible, even if it is more than three paragraphs.
3. **Summary Output for Summary**: Organise it into a concise paragraph with logical flow, \
prioritising clarity, and judge how much the information contributes to the goal.

**Final Output Format: a JSON object with the fields "rational", "evidence", "summary".**
"""

VISIT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {
            "type": ["string", "array"],
            "items": {"type": "string"},
            "minItems": 1,
            "description": "The URL(s) of the webpage(s) to visit. Can be a single URL or an "
            "array of URLs.",
        },
        "goal": {"type": "string", "description": "The goal of the visit for webpage(s)."},
    },
    "required": ["url", "goal"],
}

_CORPUS_ID = re.compile(r"^[a-z]+:[^/]")  # pubmed:123, medquad:..., as search numbers them
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SNIPPET_CHARS = 300


class IndexLookup(Protocol):
    """Where local corpus records are found by id (``EvidenceIndex`` is one)."""

    async def get(self, source_id: str) -> SearchResult | None: ...


@dataclass(frozen=True)
class _Visit:
    """One URL's outcome: a source read (perhaps summarised), or why it was not."""

    target: str
    source: Source | None = None
    error: str = ""
    note: str = ""  # said after the page's text, e.g. that it was cut short
    extraction: tuple[str, str] | None = None  # (evidence, summary) when a model read it


# Well inside the agent's limit for one tool call, so a slow summary falls back to
# the raw page instead of losing every page of the call.
SUMMARY_SECONDS = 60.0


class VisitTool:
    """Fetches pages (SSRF-guarded) or corpus records; a model, if given, reads them."""

    name = "visit"
    description = (
        "Visit webpage(s) or local evidence records (ids such as pubmed:123 from search "
        "results) and return the information in them relevant to the goal. Every page is "
        "numbered so it can be cited as [n]."
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        index: IndexLookup | None = None,
        model: ChatModel | None = None,
        generation: GenerationSettings | None = None,
        resolver: Resolver | None = None,
        timeout: float = 20.0,
        max_bytes: int = 5_000_000,
        max_urls: int = 5,
        max_chars: int = 20_000,
    ) -> None:
        self.parameters = VISIT_PARAMETERS
        self._client = client
        self._index = index
        self._model = model
        # Summaries are short and factual: a low temperature and a bounded length, so
        # one page cannot use up the tool's time.
        self._generation = generation or GenerationSettings(temperature=0.3, max_tokens=2048)
        self._resolve = resolver or system_resolver
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_urls = max_urls
        self._max_chars = max_chars

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        urls, goal = _parse_arguments(arguments)
        visits = await asyncio.gather(
            *(self._visit(url, goal, context.session_id) for url in urls[: self._max_urls])
        )
        if all(visit.source is None for visit in visits):
            raise ToolFailure(
                "no page could be read: " + "; ".join(f"{v.target}: {v.error}" for v in visits)
            )
        sections: list[str] = []
        sources: list[Source] = []
        # Numbered in the order the model listed them, whatever order they finished in.
        for visit in visits:
            if visit.source is None:
                sections.append(f"{visit.target} could not be read: {visit.error}")
                continue
            number = context.citations.number(visit.source)
            sources.append(visit.source)
            sections.append(self._render(number, visit, goal))
        if len(urls) > self._max_urls:
            sections.append(f"Only the first {self._max_urls} URLs were visited.")
        failed = sum(visit.source is None for visit in visits)
        summary = f"{len(sources)} page(s) read" + (f", {failed} failed" if failed else "")
        return ToolOutput(
            text="\n=======\n".join(sections), summary=summary, sources=tuple(sources)
        )

    async def _visit(self, target: str, goal: str, session_id: str) -> _Visit:
        try:
            source, note = await self._read(target)
        except ToolFailure as exc:
            return _Visit(target, error=str(exc))
        extraction = await self._extract(source, goal, session_id) if self._model else None
        snippet = (extraction[1] if extraction else "") or source.text
        source = dataclasses.replace(source, snippet=snippet[:_SNIPPET_CHARS])
        return _Visit(target, source, note=note, extraction=extraction)

    async def _read(self, target: str) -> tuple[Source, str]:
        if _CORPUS_ID.match(target) and not target.startswith(("http:", "https:")):
            found = await self._index.get(target) if self._index is not None else None
            if found is None:
                raise ToolFailure("not in the local index")
            return Source.from_result(found), ""
        if "://" not in target:  # models often drop the scheme: "www.example.org/page"
            target = f"https://{target}"
        page = await fetch_page(
            self._client,
            target,
            resolve=self._resolve,
            timeout=self._timeout,
            max_bytes=self._max_bytes,
        )
        if not page.text:
            raise ToolFailure("the page has no readable text")
        note = f"(Only the first {self._max_bytes} bytes of the page were read.)"
        source = Source(
            source_id=page.url,
            title=page.title or page.url,
            url=page.url,
            text=page.text[: self._max_chars],
        )
        return source, note if page.truncated else ""

    async def _extract(self, source: Source, goal: str, session_id: str) -> tuple[str, str] | None:
        """The model's (evidence, summary) for the goal; None to show the raw text.

        The call is the session's own: it waits its turn under its backend's limit
        like any round, so five pages at once never take five slots' worth unasked.
        """
        assert self._model is not None
        prompt = EXTRACTOR_PROMPT.format(content=source.text[: self._max_chars], goal=goal)
        messages: list[Message] = [{"role": "user", "content": prompt}]
        call = CallContext(session_id, "summary")
        pieces: list[str] = []
        try:
            async with (
                asyncio.timeout(SUMMARY_SECONDS),
                aclosing(self._model.stream(messages, self._generation, (), call=call)) as reply,
            ):
                async for piece in reply:
                    if isinstance(piece, StartOver):
                        pieces.clear()
                    elif isinstance(piece, str):  # no tools offered: anything else is noise
                        pieces.append(piece)
        except (BackendError, TimeoutError):
            # The page was read; losing its summary should not lose the page.
            return None
        evidence, summary = parse_extraction("".join(pieces))
        return (evidence, summary) if evidence or summary else None

    def _render(self, number: int, visit: _Visit, goal: str) -> str:
        assert visit.source is not None
        source = visit.source
        if visit.extraction is not None:
            evidence, summary = visit.extraction
            text = (
                f"The useful information in [{number}] {source.url} for user goal {goal} as "
                f"follows: \n\nEvidence in page: \n{evidence}\n\nSummary: \n{summary}\n\n"
            )
        else:
            text = f"[{number}] {source.title} ({source.url})\n{source.text[: self._max_chars]}"
        return f"{text}\n{visit.note}" if visit.note else text


def _parse_arguments(arguments: dict[str, Any]) -> tuple[list[str], str]:
    usage = 'visit needs {"url": ["https://...", ...], "goal": "..."}'
    urls = arguments.get("url")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise ToolFailure(f"{usage}: url must be a string or a list of strings")
    goal = arguments.get("goal")
    if not isinstance(goal, str):
        raise ToolFailure(f"{usage}: goal must be a string")
    urls = list(dict.fromkeys(url.strip() for url in urls if url.strip()))
    if not urls:
        raise ToolFailure(f"{usage}: no URL given")
    return urls, goal.strip()


def parse_extraction(reply: str) -> tuple[str, str]:
    """``(evidence, summary)`` from the model's JSON; the whole reply as summary if not JSON."""
    text = _THINK.sub("", reply).strip()
    start, end = text.find("{"), text.rfind("}")  # also skips ```json fences around it
    if start != -1 and end > start:
        try:
            data = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and ("evidence" in data or "summary" in data):
            return _as_text(data.get("evidence")), _as_text(data.get("summary"))
    return "", text


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(_as_text(item) for item in value)
    return json.dumps(value, ensure_ascii=False)
