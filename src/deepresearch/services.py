"""Everything a running server (or one ``ask``) owns, built from ``Settings``.

No resource exists before ``open_services`` is entered and none survives it:
the server's lifespan and the CLI both use this one assembly.

Its ``role`` says what the process does with sessions: ``single`` runs them itself
(the default process, and ``ask``); ``api`` (``serve`` in distributed mode) admits,
enqueues and streams them, so it neither builds the evidence index, checks the
sandbox, probes search sources nor makes tools: its workers do, and its ``/health``
reports theirs; ``worker`` runs the sessions a cluster's API nodes enqueue.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from deepresearch.agent import Agent, EvidenceDigestAgent, ReactAgent
from deepresearch.agent.base import AgentState, RoundHook
from deepresearch.agent.conversation import Exchange
from deepresearch.config import AgentTemplate, Settings
from deepresearch.errors import ConfigurationError
from deepresearch.llm import ChatModel, OpenAICompatibleModel, RetryingModel
from deepresearch.llm.pool import BackendPool
from deepresearch.llm.retry import RetryPolicy
from deepresearch.runtime.admission import Admission
from deepresearch.runtime.capacity import Capacity
from deepresearch.runtime.manager import SessionManager
from deepresearch.runtime.metrics import Metrics
from deepresearch.search import EvidenceIndex
from deepresearch.search.europepmc import EuropePMCSearch
from deepresearch.search.pubmed import PubMedSearch
from deepresearch.search.ratelimit import RateLimiter
from deepresearch.search.results import SearchResult
from deepresearch.sessions import SqliteSessionStore
from deepresearch.sessions.checkpoints import SqliteCheckpointStore
from deepresearch.tools.base import Tool
from deepresearch.tools.files import ParseFileTool
from deepresearch.tools.netguard import guarded_client
from deepresearch.tools.python import PythonInterpreterTool
from deepresearch.tools.sandbox import Sandbox, SandboxLimits, unprivileged_sandbox
from deepresearch.tools.search import SearchBackend, SearchTool
from deepresearch.tools.visit import VisitTool

if TYPE_CHECKING:
    from deepresearch.runtime.dispatch import Cluster, DistributedSessions

log = logging.getLogger("deepresearch")

ToolsFactory = Callable[["Services"], Mapping[str, Tool]]

# What a process does with sessions (see the module's docstring).
Role = Literal["single", "api", "worker"]
# An API node's sandbox: it runs no code (its /health reports the workers').
API_NODE_RUNS_NO_CODE = "an API node runs no code: its workers do"


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

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        await self._state.ready.wait()
        return await self._index.search(query, limit)


@dataclass
class Services:
    settings: Settings
    admission: Admission
    metrics: Metrics
    # The local manager, or in distributed mode (DEEPRESEARCH_REDIS_URL) the node's
    # dispatcher: the same methods for the routes.
    manager: SessionManager | DistributedSessions
    index: EvidenceIndex
    model: ChatModel | None
    pool: BackendPool | None  # the backends behind ``model``, when it was built here
    capacity: Capacity
    page_client: httpx.AsyncClient  # for untrusted URLs: SSRF-guarded, no cookies
    sandbox: Sandbox
    index_state: IndexState = field(default_factory=IndexState)
    search_backends: list[SearchBackend] = field(default_factory=list)
    tools: Mapping[str, Tool] = field(default_factory=dict)
    cluster: Cluster | None = None  # distributed mode: the shared Redis parts
    role: Role = "single"
    # Builds a session's agent: (session_id, config, history=...) -> Agent.
    agent_factory: Callable[..., Agent] | None = None


def default_tools(services: Services) -> dict[str, Tool]:
    settings = services.settings
    backends = services.search_backends
    tools: dict[str, Tool] = {
        "search": SearchTool(backends),
        "google_scholar": SearchTool(
            backends,
            name="google_scholar",
            description="Search scholarly literature (abstracts and articles); results are "
            "numbered so they can be cited as [n].",
        ),
        "visit": VisitTool(
            services.page_client,
            index=services.index,
            model=services.model,
            timeout=settings.visit_timeout,
            max_bytes=settings.visit_max_bytes,
        ),
        "PythonInterpreter": PythonInterpreterTool(
            services.sandbox,
            SandboxLimits(
                cpu_seconds=max(1, int(settings.python_timeout)),
                wall_seconds=settings.python_timeout,
                memory_mb=settings.python_memory_mb,
            ),
        ),
        "parse_file": ParseFileTool(
            settings.uploads_path, owner_of=services.manager.owner_of_session
        ),
    }
    return tools


# NCBI allows 3 requests/s without a key and 10 with one; stay a little under, since
# evenly sent requests can still arrive bunched.
NCBI_RATE = 2.5
NCBI_RATE_WITH_KEY = 9.0


async def choose_search_backends(
    settings: Settings, index: EvidenceIndex, state: IndexState, client: httpx.AsyncClient
) -> list[SearchBackend]:
    """``DEEPRESEARCH_SEARCH``: the named backends, or for ``auto`` the local index
    (when there is a corpus or an index) plus each live source that answers a probe."""
    rate = NCBI_RATE_WITH_KEY if settings.ncbi_api_key else NCBI_RATE
    pubmed = PubMedSearch(
        client,
        RateLimiter(rate),
        api_key=settings.ncbi_api_key,
        tool=settings.ncbi_tool,
        email=settings.ncbi_email,
    )
    europepmc = EuropePMCSearch(client, RateLimiter(NCBI_RATE_WITH_KEY))
    local = LocalSearch(index, state)
    named = set(settings.search)
    if "auto" not in named:
        every: list[SearchBackend] = [local, pubmed, europepmc]
        return [backend for backend in every if backend.name in named]
    chosen: list[SearchBackend] = []
    if settings.corpus or await index.count():
        chosen.append(local)
    pubmed_answers, europepmc_answers = await asyncio.gather(
        pubmed.probe(settings.probe_seconds), europepmc.probe(settings.probe_seconds)
    )
    if pubmed_answers:
        chosen.append(pubmed)
    if europepmc_answers:
        chosen.append(europepmc)
    log.info("search backends: %s", ", ".join(b.name for b in chosen) or "none")
    return chosen


def build_model(
    settings: Settings, client: httpx.AsyncClient
) -> tuple[ChatModel | None, BackendPool | None]:
    """The configured backends as one model: retries around a pool (of one or more)."""
    if settings.offline:
        return None, None
    members = [
        OpenAICompatibleModel(
            client,
            url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout,
        )
        for url in settings.llm_url
    ]
    fixed = settings.max_concurrent if isinstance(settings.max_concurrent, int) else None
    pool = BackendPool(members, limit=fixed)
    policy = RetryPolicy(
        attempts=settings.llm_retries + 1, total_seconds=settings.llm_retry_seconds
    )
    return RetryingModel(pool, policy), pool


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


def _background(
    stack: AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> asyncio.Task[None]:
    """Run ``work`` until the stack closes, then cancel it and wait for it."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return task


def role_for(settings: Settings, store_dir: Path | None = None) -> Role:
    """A server's role by default: an API node when a cluster is configured, unless the
    process keeps a store of its own (``ask``: it runs its session itself)."""
    return "api" if settings.distributed and store_dir is None else "single"


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    role: Role | None = None,
    tools_factory: ToolsFactory = default_tools,
    model: ChatModel | None = None,
    index_in_background: bool = True,
    store_dir: Path | None = None,
) -> AsyncIterator[Services]:
    """``role``: see the module's docstring (by default ``role_for``). ``store_dir``:
    keep the session store there instead of in the data dir (``single`` only)."""
    role = role or role_for(settings, store_dir)
    if role != "single" and not settings.distributed:
        raise ConfigurationError(
            f"DEEPRESEARCH_REDIS_URL: the {role} role shares sessions through Redis; set it"
        )
    async with AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Sessions hold people's questions; and sandboxed code runs as another user.
        settings.data_dir.chmod(0o700)
        client = await stack.enter_async_context(httpx.AsyncClient())
        page_client = await stack.enter_async_context(guarded_client())
        cluster: Cluster | None = None
        if role != "single":
            from deepresearch.runtime.dispatch import Cluster

            cluster = Cluster(settings)
            await cluster.open()
            stack.push_async_callback(cluster.close)
        else:
            store_path = settings.database_path
            if store_dir is not None:
                store_path = store_dir / settings.database_path.name
            store = SqliteSessionStore(store_path)
            await store.open()
            stack.push_async_callback(store.close)
        index = EvidenceIndex(settings.index_path)
        stack.callback(index.close)
        keyed = bool(settings.api_keys or settings.keys_file)  # quotas are per client key
        admission = Admission(
            Capacity.initial_slots(settings),
            settings.max_queue,
            max_running_per_key=settings.max_running_per_key if keyed else 0,
            max_queued_per_key=settings.max_queued_per_key if keyed else 0,
        )
        pool: BackendPool | None = None
        if model is None:
            model, pool = build_model(settings, client)
        capacity = Capacity(settings, admission, pool)
        metrics = Metrics(admission, model.states if model is not None else list)
        services: Services

        def make_agent(
            session_id: str,
            config: AgentTemplate,
            *,
            history: tuple[Exchange, ...] = (),
            on_round: RoundHook | None = None,
            checkpoint: AgentState | None = None,
        ) -> Agent:
            if services.model is None:
                # No model reads context: the digest answers each question on its own
                # (and, having no model calls to save, simply runs again on a resume).
                return EvidenceDigestAgent(session_id, services.tools)
            return ReactAgent(
                session_id,
                services.model,
                services.tools,
                config,
                history=history,
                on_round=on_round,
                checkpoint=checkpoint,
            )

        manager: SessionManager | DistributedSessions
        if cluster is not None:
            from deepresearch.runtime.dispatch import DistributedSessions

            manager = DistributedSessions(settings, cluster, metrics)
        else:
            checkpoints = SqliteCheckpointStore(store_path)
            await checkpoints.open()
            stack.push_async_callback(checkpoints.close)
            manager = SessionManager(
                settings, store, admission, metrics, make_agent, checkpoints=checkpoints
            )
        services = Services(
            settings=settings,
            admission=admission,
            metrics=metrics,
            manager=manager,
            index=index,
            model=model,
            pool=pool,
            capacity=capacity,
            page_client=page_client,
            sandbox=(
                Sandbox(refused=API_NODE_RUNS_NO_CODE)
                if role == "api"
                else unprivileged_sandbox(allow_same_user=settings.python_same_user)
            ),
            cluster=cluster,
            role=role,
            agent_factory=make_agent,
        )
        runs_sessions = role != "api"  # an API node's workers do (see the docstring)
        if runs_sessions:
            await _prepare_to_run(services, tools_factory, client, stack)
        await manager.open()
        stack.push_async_callback(manager.close)
        _background(stack, capacity.run(), "capacity")
        if runs_sessions:
            services.index_state.building = True  # until the first build has finished
            builder = _background(stack, build_index(services), "index build")
            if not index_in_background:
                await builder
        else:  # no index here: nothing to wait for
            services.index_state.ready.set()
        yield services


async def _prepare_to_run(
    services: Services,
    tools_factory: ToolsFactory,
    client: httpx.AsyncClient,
    stack: AsyncExitStack,
) -> None:
    """What running sessions needs: the sandbox checked, the search backends chosen
    (live sources probed), the tools made."""
    sandbox = services.sandbox
    if sandbox.scratch_root is not None:
        stack.callback(shutil.rmtree, sandbox.scratch_root, True)
    if await sandbox.check():
        log.info("PythonInterpreter available: %s", sandbox.describe())
    else:
        log.warning("PythonInterpreter disabled: no sandbox here (%s)", sandbox.reason)
    services.search_backends = await choose_search_backends(
        services.settings, services.index, services.index_state, client
    )
    services.tools = tools_factory(services)
