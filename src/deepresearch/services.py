"""Everything a running server (or one ``ask``) owns, built from ``Settings``.

No resource exists before ``open_services`` is entered and none survives it:
the server's lifespan and the CLI both use this one assembly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx

from deepresearch.agent import Agent, EvidenceDigestAgent, ReactAgent
from deepresearch.config import AgentTemplate, Settings
from deepresearch.errors import ConfigurationError
from deepresearch.llm import ChatModel, OpenAICompatibleModel, RetryingModel
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.manager import SessionManager
from deepresearch.runtime.metrics import Metrics
from deepresearch.search import EvidenceIndex
from deepresearch.sessions import SqliteSessionStore
from deepresearch.tools.base import Source, Tool
from deepresearch.tools.search import SearchBackend, SearchTool

log = logging.getLogger("deepresearch")

ToolsFactory = Callable[["Services"], Mapping[str, Tool]]


@dataclass
class IndexState:
    documents: int = 0
    building: bool = False
    error: str | None = None
    # Set once the start-up build has finished (or failed): a search before then
    # would see a half-built index and miss evidence it is about to have.
    ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def public(self) -> dict[str, object]:
        return {"documents": self.documents, "building": self.building, "error": self.error}


class LocalSearch:
    """The local evidence index as a search backend."""

    name = "local"

    def __init__(self, index: EvidenceIndex, state: IndexState) -> None:
        self._index = index
        self._state = state

    async def search(self, query: str, limit: int) -> list[Source]:
        await self._state.ready.wait()
        return await self._index.search(query, limit)


@dataclass
class Services:
    settings: Settings
    admission: Admission
    metrics: Metrics
    manager: SessionManager
    index: EvidenceIndex
    model: ChatModel | None
    index_state: IndexState = field(default_factory=IndexState)
    tools: Mapping[str, Tool] = field(default_factory=dict)


def default_tools(services: Services) -> dict[str, Tool]:
    backends = search_backends(services.settings, services.index, services.index_state)
    return {
        "search": SearchTool(backends),
        "google_scholar": SearchTool(
            backends,
            name="google_scholar",
            description="Search scholarly literature (abstracts and articles); results are "
            "numbered so they can be cited as [n].",
        ),
    }


def search_backends(
    settings: Settings, index: EvidenceIndex, state: IndexState
) -> list[SearchBackend]:
    names = set(settings.search)
    live = names & {"pubmed", "europepmc"}
    if live:
        raise ConfigurationError(
            f"DEEPRESEARCH_SEARCH: {', '.join(sorted(live))} is not available in this version; "
            "use local or auto"
        )
    return [LocalSearch(index, state)]


def build_model(settings: Settings, client: httpx.AsyncClient) -> ChatModel | None:
    if settings.offline:
        return None
    # One backend for now; the pool with failover wraps the same interface.
    backend = OpenAICompatibleModel(
        client,
        settings.llm_url[0],
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout=settings.llm_timeout,
    )
    return RetryingModel(backend, retries=settings.llm_retries)


async def build_index(services: Services) -> None:
    """Bring the local index up to date with the corpus (incremental)."""
    state = services.index_state
    paths = [path for path in services.settings.corpus if path.exists()]
    state.building = True
    try:
        if paths:
            stats = await services.index.build(paths)
            log.info(
                "evidence index: %d documents (%d added) in %.1f s",
                stats.documents,
                stats.added,
                stats.seconds,
            )
        state.documents = await services.index.count()
    except Exception as exc:
        state.error = f"{type(exc).__name__}: {exc}"
        log.exception("evidence index: build failed")
    finally:
        state.building = False
        state.ready.set()


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    tools_factory: ToolsFactory = default_tools,
    model: ChatModel | None = None,
    index_in_background: bool = True,
) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        client = await stack.enter_async_context(httpx.AsyncClient())
        store = SqliteSessionStore(settings.database_path)
        await store.open()
        stack.push_async_callback(store.close)
        index = EvidenceIndex(settings.index_path)
        stack.callback(index.close)
        admission = Admission(settings.max_concurrent, settings.max_queue)
        metrics = Metrics(admission)
        services: Services

        def make_agent(session_id: str, config: AgentTemplate) -> Agent:
            if services.model is None:
                return EvidenceDigestAgent(session_id, services.tools)
            return ReactAgent(session_id, services.model, services.tools, config)

        manager = SessionManager(settings, store, admission, metrics, make_agent)
        services = Services(
            settings=settings,
            admission=admission,
            metrics=metrics,
            manager=manager,
            index=index,
            model=model if model is not None else build_model(settings, client),
        )
        services.tools = tools_factory(services)
        await manager.open()
        stack.push_async_callback(manager.close)
        services.index_state.building = True  # until the first build has finished
        builder = asyncio.create_task(build_index(services))
        if not index_in_background:
            await builder

        async def stop_builder() -> None:
            builder.cancel()
            await asyncio.gather(builder, return_exceptions=True)

        stack.push_async_callback(stop_builder)
        yield services
