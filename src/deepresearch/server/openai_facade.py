"""The research agent as an OpenAI chat model: ``/v1/chat/completions``, ``/v1/models``.

Any OpenAI client or chat UI can use it. The last user message is the question,
the earlier user/assistant pairs its conversation. Streamed, the research shows
as ``reasoning_content`` deltas and the answer as ``content`` deltas, the cited
sources appended as a numbered Markdown list; not streamed, one completion with
``usage`` (estimated: the research spans many model calls). Each request is one
session, admitted like ``/chat/stream``; its id is in the ``X-Session-Id`` header.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepresearch.agent.conversation import Exchange
from deepresearch.errors import ClientError
from deepresearch.events import (
    Event,
    FinalAnswer,
    FinalAnswerChunk,
    Init,
    Queued,
    RoundStart,
    Thinking,
    ToolCallStart,
    ToolError,
    ToolResult,
    parse_event,
)
from deepresearch.llm.base import estimate_tokens
from deepresearch.runtime.manager import SessionRequest
from deepresearch.server.deps import Caller, Owner, Svc, client_of
from deepresearch.server.following import wait_for_end
from deepresearch.server.limits import read_json
from deepresearch.server.openapi import OPENAI_ERROR_RESPONSES, inline_schema
from deepresearch.sessions.records import STATUS_BY_TERMINAL_EVENT, SessionRecord

MODEL = "deepresearch"
audit = logging.getLogger("deepresearch.audit")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
router = APIRouter(prefix="/v1", responses=OPENAI_ERROR_RESPONSES)


class OpenAIError(ClientError):
    """An error in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.param = param
        self.code = code


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        409: "conflict_error",
        422: "invalid_request_error",
        503: "overloaded_error",
    }.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    # OpenAI clients send many fields (n, user, logprobs, ...): unknown ones are ignored.
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: Annotated[list[_Message], Field(min_length=1)]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=131_072)


def completion_body() -> dict[str, Any]:
    schema = inline_schema(CompletionRequest.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# A completion as JSON, or (``"stream": true``) its chunks as server-sent events.
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion, or its chunks when streamed",
        "content": {"application/json": {"schema": {}}, "text/event-stream": {"schema": {}}},
    }
}


def _conversation(messages: list[_Message]) -> tuple[str, tuple[Exchange, ...]]:
    """The question (the last user message) and the earlier question/answer pairs."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise OpenAIError(
            400, "the last message must be a user message with text", param="messages"
        )
    history: list[Exchange] = []
    asked: str | None = None
    for message in messages[:-1]:
        if message.role == "user":
            asked = message.text()
        elif message.role == "assistant" and asked is not None and message.text().strip():
            history.append(Exchange(asked, message.text()))
            asked = None
    return messages[-1].text().strip(), tuple(history)


async def _parse(request: Request, max_depth: int) -> CompletionRequest:
    # JSON only, nested no deeper than the limit; a bad body is a 400 naming ``body``.
    body = await read_json(request, max_depth)
    try:
        parsed = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or "body"
        raise OpenAIError(400, f"{param}: {first['msg']}", param=param) from exc
    if parsed.model != MODEL:
        raise OpenAIError(
            404,
            f"the model {parsed.model!r} does not exist; use {MODEL!r}",
            param="model",
            code="model_not_found",
        )
    return parsed


@router.get("/models")
async def models(who: Owner) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "deepresearch"}],
    }


@router.post("/chat/completions", openapi_extra=completion_body(), responses=COMPLETION_RESPONSES)
async def chat_completions(request: Request, svc: Svc, caller: Caller) -> Response:
    who = caller.scope
    body = await _parse(request, svc.settings.max_json_depth)
    question, history = _conversation(body.messages)
    limit = svc.settings.max_question_chars
    if len(question) > limit:
        raise OpenAIError(400, f"the question is longer than {limit} characters", param="messages")
    session_id = await svc.manager.start(
        SessionRequest(
            question=question,
            generation={
                "temperature": body.temperature,
                "top_p": body.top_p,
                "presence_penalty": body.presence_penalty,
                "max_tokens": body.max_completion_tokens or body.max_tokens,
            },
            owner=caller.owner,
            client=client_of(request),
            history=history,
        )
    )
    audit.info("audit: %s (%s) started session %s", caller.name, caller.role, session_id)
    headers = {"X-Session-Id": session_id}
    prompt_tokens = estimate_tokens([{"role": "user", "content": m.text()} for m in body.messages])
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(svc, session_id, prompt_tokens if include_usage else None)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers={**STREAM_HEADERS, **headers}
        )
    record = await wait_for_end(request, svc, session_id, who)
    return _completion(record, prompt_tokens, headers)


def _references(citations: list[dict[str, Any]], dropped: Sequence[int] = ()) -> str:
    lines = []
    for citation in citations:
        title = citation.get("title") or citation.get("source_id", "")
        url = citation.get("url", "")
        link = f"[{title}]({url})" if url else title
        lines.append(f"{citation['id']}. {link}")
    for number in dropped:
        lines.append(f"- [{number}] named no source and was removed from the answer.")
    return "\n\n**References**\n\n" + "\n".join(lines) if lines else ""


_STATUS_BY_OUTCOME = {"failed": 502, "timeout": 504, "cancelled": 409}


def _completion(record: SessionRecord, prompt_tokens: int, headers: dict[str, str]) -> Response:
    status = record.status
    if status in _STATUS_BY_OUTCOME:
        message = record.error or status
        return JSONResponse(
            status_code=_STATUS_BY_OUTCOME[status],
            content=error_body(message, _STATUS_BY_OUTCOME[status], code=status),
            headers=headers,
        )
    if record.answer is None:
        content = f"No answer: {record.error or 'the research found none'}"
    else:
        content = record.answer + _references(record.citations)
    completion_tokens = estimate_tokens([{"role": "assistant", "content": content}])
    return JSONResponse(
        {
            "id": f"chatcmpl-{record.id}",
            "object": "chat.completion",
            "created": int(record.created_at.timestamp()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
        headers=headers,
    )


def _progress(event: Event) -> str | None:
    """What a research event reads as in ``reasoning_content``."""
    if isinstance(event, Queued):
        return f"Waiting for a free research slot: position {event.position}.\n"
    if isinstance(event, Init):
        return "Research started.\n"
    if isinstance(event, RoundStart):
        return f"\n**Round {event.round}**\n"
    if isinstance(event, Thinking):
        return event.delta
    if isinstance(event, ToolCallStart):
        return f"\n→ {event.content}\n"
    if isinstance(event, ToolResult):
        return f"← {event.content}\n"
    if isinstance(event, ToolError):
        return f"✗ {event.tool_name} failed: {event.content}\n"
    return None


async def _chunks(svc: Svc, session_id: str, prompt_tokens: int | None) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            "id": f"chatcmpl-{session_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    sent = ""  # the answer as streamed so far
    written = 0
    async for stored in svc.manager.follow(session_id, idle=svc.settings.heartbeat_seconds):
        if stored is None:
            yield b": keep-alive\n\n"
            continue
        event = parse_event(stored.data)
        if isinstance(event, FinalAnswerChunk):
            if event.content.startswith(sent) and len(event.content) > len(sent):
                yield chunk({"content": event.content[len(sent) :]})
                sent = event.content
            continue
        if isinstance(event, FinalAnswer):
            answer = event.answer_data.answer
            consistent = answer.startswith(sent)
            rest = answer[len(sent) :] if consistent else ""
            # Text already sent cannot be taken back: say which markers named nothing.
            dropped = () if consistent else event.dropped_citations
            citations = [c.model_dump() for c in event.answer_data.citations]
            references = _references(citations, dropped)
            if rest + references:
                yield chunk({"content": rest + references})
            written = len(sent) + len(rest + references)
            continue
        if event.type == "completed":
            yield chunk({}, "stop")
        elif event.type == "no_answer":
            yield chunk({"content": f"No answer: {event.content}"}, "stop")
        elif event.type in {"error", "timeout", "cancelled"}:
            status = _STATUS_BY_OUTCOME[STATUS_BY_TERMINAL_EVENT[event.type]]
            body = error_body(event.content, status, code=event.type)
            yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
        else:
            text = _progress(event)
            if text:
                yield chunk({"reasoning_content": text})
            continue
        if prompt_tokens is not None:
            completion = max(1, int(written / 3.5))
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
            payload = {
                "id": f"chatcmpl-{session_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(payload)}\n\n".encode()
        break
    yield b"data: [DONE]\n\n"
