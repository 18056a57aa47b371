"""The FastAPI app factory: a lifespan that owns every resource, thin routes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from deepresearch.config import Settings
from deepresearch.errors import ClientError, Overloaded
from deepresearch.llm.base import ChatModel
from deepresearch.runtime.manager import SessionRequest
from deepresearch.server import conversations, openai_facade
from deepresearch.server.deps import Owner, Svc, Unauthorized, client_of
from deepresearch.server.following import wait_for_end
from deepresearch.server.openai_facade import OpenAIError, error_body
from deepresearch.server.schemas import ChatRequest
from deepresearch.server.sse import sse_bytes
from deepresearch.server.views import detail, summary
from deepresearch.services import Services, ToolsFactory, default_tools, open_services
from deepresearch.sessions.records import SessionStatus

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter()
STATIC = Path(__file__).parent / "static"


async def parse_chat(request: Request, svc: Services) -> ChatRequest:
    """The body, validated; the question's length against the configured limit."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {exc}"}]
        ) from exc
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


async def start(request: Request, svc: Services, who: str | None) -> str:
    chat = await parse_chat(request, svc)
    return await svc.manager.start(
        SessionRequest(
            question=chat.question,
            generation=chat.generation(),
            session_id=chat.session_id,
            on_disconnect=chat.on_disconnect,
            owner=who,
            client=client_of(request),
        )
    )


def stream(svc: Services, session_id: str, after: int, deltas: bool) -> StreamingResponse:
    events = svc.manager.follow(
        session_id, after, idle=svc.settings.heartbeat_seconds, deltas=deltas
    )
    return StreamingResponse(sse_bytes(events), media_type="text/event-stream", headers=SSE_HEADERS)


# ``?deltas=true``: streamed text (reasoning, the answer) as pieces in ``delta``, with
# ``content`` empty, instead of the accumulated ``content`` the note's front end reads.
Deltas = Annotated[bool, Query(description="stream reasoning and answer text as deltas only")]


@router.post("/chat/stream")
async def chat_stream(
    request: Request, svc: Svc, who: Owner, deltas: Deltas = False
) -> StreamingResponse:
    session_id = await start(request, svc, who)
    return stream(svc, session_id, 0, deltas)


@router.post("/chat")
async def chat(request: Request, svc: Svc, who: Owner) -> Response:
    session_id = await start(request, svc, who)
    record = await wait_for_end(request, svc, session_id, who)
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
async def health(svc: Svc) -> dict[str, Any]:
    admission = svc.admission
    return {
        "status": "healthy",
        "agent_config_initialized": True,
        "active_sessions": admission.busy,
        "queued_sessions": admission.queued,
        "max_concurrent": admission.max_concurrent,
        "max_queue": admission.max_queue,
        "lock_acquired": admission.saturated,
        "mode": "offline" if svc.model is None else "llm",
        "llm": {
            "configured": svc.model is not None,
            "backends": [vars(state) for state in svc.model.states()] if svc.model else [],
        },
        "index": svc.index_state.public(),
    }


@router.get("/sessions")
async def sessions(
    svc: Svc,
    who: Owner,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: SessionStatus | None = None,
) -> dict[str, Any]:
    records, total = await svc.manager.list_sessions(
        limit=limit, offset=offset, status=status, owner=who
    )
    return {
        "active_sessions": {record.id: summary(record) for record in records},
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get("/sessions/{session_id}")
async def session(session_id: str, svc: Svc, who: Owner) -> dict[str, Any]:
    return detail(await svc.manager.get(session_id, who))


@router.get("/sessions/{session_id}/events")
async def session_events(
    session_id: str,
    svc: Svc,
    who: Owner,
    last_event_id: Annotated[str | None, Header()] = None,
    deltas: Deltas = False,
) -> StreamingResponse:
    await svc.manager.get(session_id, who)
    after = 0
    if last_event_id is not None:
        if not re.fullmatch(r"[0-9]+", last_event_id.strip()):
            raise RequestValidationError(
                [{"loc": ("Last-Event-ID",), "msg": "must be an event sequence number"}]
            )
        after = int(last_event_id)
    return stream(svc, session_id, after, deltas)


@router.delete("/sessions/{session_id}")
async def cancel(session_id: str, svc: Svc, who: Owner) -> dict[str, Any]:
    record = await svc.manager.cancel(session_id, who, "cancelled by the client")
    return detail(record)


@router.get("/metrics")
async def metrics(svc: Svc, who: Owner) -> Response:
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

    app = FastAPI(title="deepresearch", version="0.1.0", lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            # Any request header: OpenAI's browser SDK adds its own (x-stainless-*).
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Session-Id"],
        )

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
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        if isinstance(exc, Overloaded):
            request.app.state.services.metrics.rejected.inc()
        content: dict[str, Any] = {"error": str(exc)}
        if _openai_route(request):
            param, code = (exc.param, exc.code) if isinstance(exc, OpenAIError) else (None, None)
            content = error_body(str(exc), exc.status_code, param, code)
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
    return app
