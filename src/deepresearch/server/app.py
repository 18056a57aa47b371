"""The FastAPI app factory: a lifespan that owns every resource, thin routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from deepresearch.config import Settings
from deepresearch.errors import ClientError, Overloaded
from deepresearch.llm.base import ChatModel
from deepresearch.runtime.manager import SessionRequest
from deepresearch.server.auth import ANONYMOUS, Forbidden, KeyRing, Principal, load_keyring
from deepresearch.server.limits import (
    BodyLimit,
    RateLimiter,
    parse_last_event_id,
    read_json,
)
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
from deepresearch.services import Services, ToolsFactory, default_tools, open_services
from deepresearch.sessions.records import SessionRecord, SessionStatus

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Sequence numbers and offsets fit SQLite's 64-bit integers with room to spare.
MAX_OFFSET = 10**9

audit = logging.getLogger("deepresearch.audit")

router = APIRouter(responses=ERROR_RESPONSES)


class _Unauthorized(Exception):
    pass


async def get_services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(get_services)]


def identify(request: Request, authorization: str | None) -> Principal | None:
    """The caller named by ``authorization``: ``ANONYMOUS`` with keys off, ``None``
    for a missing or unknown key."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return ANONYMOUS
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return keyring.identify(key.strip())


async def get_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The caller; 401 without a valid key when keys are on, 429 past its rate."""
    caller = identify(request, authorization)
    if caller is None:
        raise _Unauthorized()
    if caller.owner is not None:
        limiter: RateLimiter = request.app.state.rate_limiter
        limiter.take(caller.name)
    return caller


Caller = Annotated[Principal, Depends(get_caller)]


async def get_owner(caller: Caller) -> str | None:
    """Whose sessions the caller may see: its own, or everyone's (``None``: an admin,
    or keys off)."""
    return caller.scope


Owner = Annotated[str | None, Depends(get_owner)]


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


async def start(request: Request, svc: Services, caller: Principal) -> str:
    chat = await parse_chat(request, svc)
    session_id = await svc.manager.start(
        SessionRequest(
            question=chat.question,
            generation=chat.generation(),
            session_id=chat.session_id,
            on_disconnect=chat.on_disconnect,
            owner=caller.owner,
        )
    )
    audit.info("audit: %s (%s) started session %s", caller.name, caller.role, session_id)
    return session_id


def stream(svc: Services, session_id: str, after: int, deltas: bool) -> StreamingResponse:
    events = svc.manager.follow(
        session_id, after, idle=svc.settings.heartbeat_seconds, deltas=deltas
    )
    return StreamingResponse(sse_bytes(events), media_type="text/event-stream", headers=SSE_HEADERS)


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
    request: Request, svc: Svc, caller: Caller, deltas: Deltas = False
) -> StreamingResponse:
    session_id = await start(request, svc, caller)
    return stream(svc, session_id, 0, deltas)


@router.post("/chat", openapi_extra=chat_body(), responses=CHAT_RESPONSES)
async def chat(request: Request, svc: Svc, caller: Caller) -> Response:
    who = caller.scope
    session_id = await start(request, svc, caller)

    async def drain() -> None:
        async for _ in svc.manager.follow(session_id):
            pass

    # Nothing cancels a plain handler when its client leaves, so watch for it: the
    # session's on_disconnect policy must apply here as it does to streams.
    finished = asyncio.create_task(drain())
    gone = asyncio.create_task(_disconnected(request))
    await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (finished, gone):
        task.cancel()
    await asyncio.gather(finished, gone, return_exceptions=True)
    record = await svc.manager.get(session_id, who)
    return JSONResponse(
        {
            "session_id": record.id,
            "status": record.status,
            "answer": record.answer,
            "citations": record.citations,
            "error": record.error,
        }
    )


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
    if caller is not None and caller.is_admin:
        answer["max_queue"] = admission.max_queue
        answer["mode"] = "offline" if svc.model is None else "llm"
        answer["llm"] |= {
            "configured": svc.model is not None,
            "backends": [vars(state) for state in states],
        }
        answer["index"] = svc.index_state.public()
        answer["code_execution_reason"] = sandbox.reason or None
    return answer


@router.get("/sessions")
async def sessions(
    svc: Svc,
    who: Owner,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    status: SessionStatus | None = None,
) -> dict[str, Any]:
    records, total = await svc.manager.list_sessions(
        limit=limit, offset=offset, status=status, owner=who
    )
    return {
        "active_sessions": {record.id: _summary(record) for record in records},
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get("/sessions/{session_id}")
async def session(session_id: str, svc: Svc, who: Owner) -> dict[str, Any]:
    return _detail(await svc.manager.get(session_id, who))


@router.get(
    "/sessions/{session_id}/events", response_class=StreamingResponse, responses=event_stream()
)
async def session_events(
    session_id: str,
    svc: Svc,
    who: Owner,
    last_event_id: Annotated[str | None, Header()] = None,
    deltas: Deltas = False,
) -> StreamingResponse:
    after = parse_last_event_id(last_event_id)
    await svc.manager.get(session_id, who)
    return stream(svc, session_id, after, deltas)


@router.delete("/sessions/{session_id}")
async def cancel(session_id: str, svc: Svc, caller: Caller) -> dict[str, Any]:
    record = await svc.manager.cancel(session_id, caller.scope, "cancelled by the client")
    audit.info("audit: %s (%s) cancelled session %s", caller.name, caller.role, session_id)
    return _detail(record)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(svc: Svc, caller: Caller) -> Response:
    if not caller.is_admin:
        raise Forbidden("the metrics are for admin keys")
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")


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
        return _field_errors(list(exc.errors()))

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if isinstance(exc, Overloaded):
            request.app.state.services.metrics.rejected.inc()
        return JSONResponse(
            status_code=exc.status_code, content={"error": str(exc)}, headers=headers
        )

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            status_code=401,
            content={"error": "a valid 'Authorization: Bearer KEY' header is required"},
            headers={"WWW-Authenticate": "Bearer"},
        )

    app.include_router(router)
    complete_openapi(app, settings.max_question_chars)
    return app


def _summary(record: SessionRecord) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "question": record.question,
        "start_time": record.created_at.isoformat(),
        "status": record.status,
    }
    if record.ended_at is not None:
        summary["end_time"] = record.ended_at.isoformat()
    return summary


def _detail(record: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": record.id,
        **_summary(record),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "on_disconnect": record.on_disconnect,
        "answer": record.answer,
        "citations": record.citations,
        "error": record.error,
        "events": record.last_seq,
    }
