"""The OpenAPI schema, complete: request bodies (read by hand, so FastAPI cannot
see them) and every error a route may answer, in the one shape errors take."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from deepresearch.server.schemas import ChatRequest


class ErrorBody(BaseModel):
    """Every 4xx and 503: what is wrong, and for bad input each field named."""

    error: str
    fields: dict[str, str] | None = None


class ChatResult(BaseModel):
    session_id: str
    status: str
    answer: str | None
    citations: list[dict[str, Any]]
    error: str | None


_ERRORS = {
    400: "the Host header is not one of this server's names",
    401: "a valid 'Authorization: Bearer KEY' header is required",
    403: "the key's role may not do this",
    404: "no such session (or not the caller's)",
    408: "the body arrived too slowly",
    409: "the session id is taken, or the session has already ended",
    413: "the body is too large",
    415: "the body is not JSON",
    422: "invalid input; `fields` names each bad field",
    429: "this key's rate or quota is spent; see Retry-After",
    503: "every slot is busy and the queue is full, or the store cannot write; see Retry-After",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """The ``/v1`` routes' errors, in OpenAI's shape; those answered before a route
    runs (a body too large or too slow, a Host not served) keep the server's own."""

    error: OpenAIErrorDetail | str
    fields: dict[str, str] | None = None


_OPENAI_ERRORS = {**_ERRORS, 400: "invalid input (`param` names the field), or an unknown Host"}
_OPENAI_ERRORS.pop(422)
_OPENAI_ERRORS[404] = "no such model"

OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody, "description": text} for code, text in _OPENAI_ERRORS.items()
}

CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatResult, "description": "the session's outcome"}
}


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` written in place (an OpenAPI document
    has no ``$defs`` for the references to point at)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def chat_body() -> dict[str, Any]:
    schema = ChatRequest.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


# One server-sent event: ``id`` its sequence number, ``data`` the event's JSON
# (contract section 3); comments (heartbeats) are not events.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["data"],
}


def event_stream() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "the session's events as server-sent events",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        }
    }


def complete_openapi(app: FastAPI, question_chars: int) -> None:
    """The schema as FastAPI builds it, with this server's question length limit."""
    original = app.openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path in ("/chat", "/chat/stream"):
            body = schema["paths"][path]["post"]["requestBody"]
            question = body["content"]["application/json"]["schema"]["properties"]["question"]
            question["maxLength"] = question_chars
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
