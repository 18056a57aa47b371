"""The FastAPI app factory: a lifespan that owns every resource, thin routes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from deepresearch.config import Settings
from deepresearch.errors import ClientError, Overloaded
from deepresearch.llm.base import ChatModel
from deepresearch.runtime.ids import IdSpace
from deepresearch.runtime.manager import SessionRequest
from deepresearch.server import conversations, openai_facade
from deepresearch.server.auth import Forbidden, Principal, load_keyring
from deepresearch.server.deps import (
    Caller,
    Ids,
    Owner,
    Svc,
    Unauthorized,
    client_of,
    identify,
)
from deepresearch.server.following import wait_for_end
from deepresearch.server.limits import (
    MAX_OFFSET,
    BodyLimit,
    RateLimiter,
    parse_last_event_id,
    read_json,
)
from deepresearch.server.openai_facade import OpenAIError, error_body
from deepresearch.server.openapi import (
    CHAT_RESPONSES,
    ERROR_RESPONSES,
    chat_body,
    complete_openapi,
    event_stream,
)
from deepresearch.server.schemas import ChatRequest
from deepresearch.server.security import add_browser_guards
from deepresearch.server.sse import sse_bytes
from deepresearch.server.views import detail, summary
from deepresearch.services import Services, ToolsFactory, default_tools, open_services
from deepresearch.sessions.records import SessionStatus

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

audit = logging.getLogger("deepresearch.audit")

router = APIRouter(responses=ERROR_RESPONSES)
STATIC = Path(__file__).parent / "static"


async def parse_chat(request: Request, svc: Services) -> ChatRequest:
    """The body, validated; the question's length against the configured limit."""
    body = await read_json(request, svc.settings.max_json_depth)
    if not isinstance(body, dict):
        raise RequestValidationError([{"loc": ("body",), "msg": "the body must be a JSON object"}])
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    limit = svc.settings.max_question_chars
    if len(chat.question) > limit:
        raise RequestValidationError(
            [{"loc": ("question",), "msg": f"the question is longer than {limit} characters"}]
        )
    return chat


async def start(request: Request, svc: Services, caller: Principal, ids: IdSpace) -> str:
    """Start the body's session; its store id (``ids`` shows it to the caller)."""
    chat = await parse_chat(request, svc)
    asked = chat.session_id
    session_id = await svc.manager.start(
        SessionRequest(
            question=chat.question,
            generation=chat.generation(),
            session_id=await ids.resolve(svc.manager.store, asked) if asked else None,
            on_disconnect=chat.on_disconnect,
            owner=caller.owner,
            client=client_of(request),
        )
    )
    audit.info("audit: %s (%s) started session %s", caller.name, caller.role, session_id)
    return session_id


def stream(
    svc: Services, session_id: str, after: int, deltas: bool, ids: IdSpace
) -> StreamingResponse:
    events = svc.manager.follow(
        session_id, after, idle=svc.settings.heartbeat_seconds, deltas=deltas
    )
    return StreamingResponse(
        sse_bytes(events, ids.event), media_type="text/event-stream", headers=SSE_HEADERS
    )


# ``?deltas=true``: streamed text (reasoning, the answer) as pieces in ``delta``, with
# ``content`` empty, instead of the accumulated ``content`` the note's front end reads.
Deltas = Annotated[bool, Query(description="stream reasoning and answer text as deltas only")]


@router.post(
    "/chat/stream",
    response_class=StreamingResponse,
    openapi_extra=chat_body(),
    responses=event_stream(),
)
async def chat_stream(
    request: Request, svc: Svc, caller: Caller, ids: Ids, deltas: Deltas = False
) -> StreamingResponse:
    session_id = await start(request, svc, caller, ids)
    return stream(svc, session_id, 0, deltas, ids)


@router.post("/chat", openapi_extra=chat_body(), responses=CHAT_RESPONSES)
async def chat(request: Request, svc: Svc, caller: Caller, ids: Ids) -> Response:
    who = caller.scope
    session_id = await start(request, svc, caller, ids)
    record = ids.record(await wait_for_end(request, svc, session_id, who))
    return JSONResponse(
        {
            "session_id": record.id,
            "status": record.status,
            "answer": record.answer,
            "citations": record.citations,
            "error": record.error,
        }
    )


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page (no data in it: with keys on, it asks for one)."""
    return FileResponse(STATIC / "index.html")


@router.get("/health")
async def health(
    request: Request, svc: Svc, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Status and counts for anyone; details (backends, reasons) for an admin key, or
    for everyone when keys are off."""
    admission = svc.admission
    states = svc.model.states() if svc.model is not None else []
    sandbox = svc.sandbox
    answer: dict[str, Any] = {
        "status": "healthy",
        "agent_config_initialized": True,
        "active_sessions": admission.busy,
        "queued_sessions": admission.queued,
        "max_concurrent": admission.max_concurrent,
        "lock_acquired": admission.saturated,
        "llm": {"backends": len(states), "healthy": sum(1 for s in states if s.healthy)},
        "index": {
            "building": svc.index_state.building,
            "documents": svc.index_state.documents,
        },
        "code_execution": sandbox.available is True,
    }
    caller = identify(request, authorization)
    admin = caller is not None and caller.is_admin
    if admin:
        answer["max_queue"] = admission.max_queue
        answer["mode"] = "offline" if svc.model is None else "llm"
        answer["llm"] |= {
            "configured": svc.model is not None,
            "backends": [vars(state) for state in states],
        }
        answer["index"] = svc.index_state.public()
        answer["code_execution_reason"] = sandbox.reason or None
    if svc.cluster is not None:
        # Distributed mode: the workers' slots, index and sandbox, and saq's queue.
        answer |= await svc.cluster.health(details=admin)
    return answer


@router.get("/sessions")
async def sessions(
    svc: Svc,
    who: Owner,
    ids: Ids,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    status: SessionStatus | None = None,
) -> dict[str, Any]:
    records, total = await svc.manager.list_sessions(
        limit=limit, offset=offset, status=status, owner=who
    )
    return {
        "active_sessions": {ids.public(record.id): summary(record) for record in records},
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get("/sessions/{session_id}")
async def session(session_id: str, svc: Svc, who: Owner, ids: Ids) -> dict[str, Any]:
    stored_id = await ids.resolve(svc.manager.store, session_id)
    return detail(ids.record(await svc.manager.get(stored_id, who)))


@router.get(
    "/sessions/{session_id}/events", response_class=StreamingResponse, responses=event_stream()
)
async def session_events(
    session_id: str,
    svc: Svc,
    who: Owner,
    ids: Ids,
    last_event_id: Annotated[str | None, Header()] = None,
    deltas: Deltas = False,
) -> StreamingResponse:
    after = parse_last_event_id(last_event_id)
    stored_id = await ids.resolve(svc.manager.store, session_id)
    await svc.manager.get(stored_id, who)
    return stream(svc, stored_id, after, deltas, ids)


@router.delete("/sessions/{session_id}")
async def cancel(session_id: str, svc: Svc, caller: Caller, ids: Ids) -> dict[str, Any]:
    stored_id = await ids.resolve(svc.manager.store, session_id)
    record = await svc.manager.cancel(stored_id, caller.scope, "cancelled by the client")
    audit.info("audit: %s (%s) cancelled session %s", caller.name, caller.role, stored_id)
    return detail(ids.record(record))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(svc: Svc, caller: Caller) -> Response:
    if not caller.is_admin:
        raise Forbidden("the metrics are for admin keys")
    refresh = getattr(svc.manager, "refresh_metrics", None)
    if refresh is not None:  # distributed mode: the cluster's gauges, read from Redis
        await refresh()
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")


def _openai_route(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _field_errors(errors: list[Any]) -> JSONResponse:
    fields: dict[str, str] = {}
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        name = ".".join(location) if location else "body"
        if error.get("type") == "json_invalid":
            name = "body"
        fields.setdefault(name, error.get("msg", "invalid"))
    summary = "; ".join(f"{name}: {message}" for name, message in fields.items())
    return JSONResponse(
        status_code=422, content={"error": f"invalid request: {summary}", "fields": fields}
    )


def create_app(
    settings: Settings,
    *,
    tools_factory: ToolsFactory = default_tools,
    model: ChatModel | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, tools_factory=tools_factory, model=model) as services:
            app.state.services = services
            yield

    keyring = load_keyring(settings.api_keys, settings.keys_file)
    app = FastAPI(title="deepresearch", version="0.1.0", lifespan=lifespan)
    app.state.keyring = keyring
    app.state.rate_limiter = RateLimiter(settings.rate_per_minute)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout
    )
    add_browser_guards(app, settings, keyring.enabled)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        response = _field_errors(list(exc.errors()))
        if _openai_route(request):
            content = json.loads(bytes(response.body))
            param = next(iter(content["fields"]), None)
            return JSONResponse(status_code=400, content=error_body(content["error"], 400, param))
        return response

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if isinstance(exc, Overloaded):
            request.app.state.services.metrics.rejected.inc()
        ids: IdSpace | None = getattr(request.state, "ids", None)
        message = ids.text(str(exc)) if ids is not None else str(exc)
        content: dict[str, Any] = {"error": message}
        if _openai_route(request):
            param, code = (exc.param, exc.code) if isinstance(exc, OpenAIError) else (None, None)
            content = error_body(message, exc.status_code, param, code)
        return JSONResponse(status_code=exc.status_code, content=content, headers=headers)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        message = "a valid 'Authorization: Bearer KEY' header is required"
        content = error_body(message, 401) if _openai_route(request) else {"error": message}
        return JSONResponse(
            status_code=401, content=content, headers={"WWW-Authenticate": "Bearer"}
        )

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(conversations.router)
    app.include_router(openai_facade.router)
    complete_openapi(app, settings.max_question_chars)
    return app
