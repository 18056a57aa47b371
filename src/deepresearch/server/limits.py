"""Bounds on what a request may be: its size, its pace, its JSON, its numbers, its rate.

- ``BodyLimit`` (ASGI middleware): a declared ``Content-Length`` past the limit is
  refused at once with 413; a body without one is counted while it is read and
  refused (413) the moment it passes the limit, so a 100 MB body is never held.
  Each wait for the next piece of a body is bounded by the body timeout (408).
- ``header_deadline_protocol``: uvicorn's HTTP protocol with a deadline for a
  request's headers (uvicorn has none: a client could hold a connection open
  forever by sending a header a minute).
- ``read_json``: JSON bodies only (a ``text/plain`` POST from another web page is
  refused with 415), nesting bounded before parsing, integers of absurd length
  clamped so that validation names the field instead of the parser failing.
- ``RateLimiter``: a token bucket per key (requests a minute), 429 + Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepresearch.errors import ClientError

# A value far past every bounded integer field, so "less than or equal to N" is what
# the client reads, instead of the parser's "exceeds the limit for integer digits".
_HUGE = 10**30
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_JSON_MEDIA = re.compile(r"^application/([a-z0-9.+-]*\+)?json$")
# Sequence numbers fit SQLite's signed 64-bit integers with room to spare.
_SEQ = re.compile(r"[0-9]{1,18}")
# Sequence numbers and offsets fit SQLite's 64-bit integers with room to spare.
MAX_OFFSET = 10**9


class PayloadTooLarge(ClientError):
    status_code = 413


class RequestTimedOut(ClientError):
    status_code = 408


class UnsupportedMediaType(ClientError):
    status_code = 415


class RateLimited(ClientError):
    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _json_response(status: int, message: str) -> list[Message]:
    body = json.dumps({"error": message}).encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]


class BodyLimit:
    """Refuses bodies past ``max_bytes`` (413) and bodies sent too slowly (408)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (
            not declared.isdigit() or len(declared) > 12 or int(declared) > self.max_bytes
        ):
            for message in _json_response(
                413, f"the body is larger than {self.max_bytes} bytes (DEEPRESEARCH_MAX_BODY_BYTES)"
            ):
                await send(message)
            return
        received = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestTimedOut(
                    f"the body did not arrive within {self.body_timeout:g} s"
                ) from None
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(f"the body is larger than {self.max_bytes} bytes")
            complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


MAX_HEADER_BYTES = 65_536
_TOO_LARGE_BODY = b'{"error": "the request headers are too large"}'
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TOO_LARGE_BODY)
) + _TOO_LARGE_BODY


def header_deadline_protocol(
    seconds: float, max_bytes: int = MAX_HEADER_BYTES
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose next request's headers have
    not all arrived ``seconds`` after it opened or after its last response, or that
    sends more than ``max_bytes`` of them (httptools itself sets no limit)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools missing: the pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class HeaderDeadline(Base):
        _header_bytes = 0  # of the next request's head, so far

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                self._header_bytes = 0  # a request's headers are complete
            elif self._awaiting_headers():
                self._header_bytes += len(data)
                if self._header_bytes > max_bytes and not self.transport.is_closing():
                    self.transport.write(TOO_LARGE)
                    self.transport.close()

        def _awaiting_headers(self) -> bool:
            """No request in progress: what arrives now is the next request's head (the
            rest of a body the response did not wait for is not)."""
            cycle = self.cycle
            return cycle is None or (cycle.response_complete and not cycle.more_body)

        def _arm(self) -> None:
            waiting_after = self.cycle  # a new request replaces it once its headers are in
            self._header_bytes = 0

            def late() -> None:
                if self.cycle is waiting_after and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, late)

    return HeaderDeadline


def server_options(header_timeout: float) -> dict[str, Any]:
    """uvicorn settings that bound a connection (shared by ``serve`` and the tests)."""
    return {
        "http": header_deadline_protocol(header_timeout),
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": 16_384,  # the headers' size
    }


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        return -_HUGE if text.startswith("-") else _HUGE
    return int(text)


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    depth = 0
    for match in _JSON_TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _invalid(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": (field,), "msg": message}])


async def read_json(request: Request, max_depth: int) -> object:
    """The request's JSON body, or a 415/422 naming what is wrong."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not _JSON_MEDIA.match(media):
        raise UnsupportedMediaType(
            "Content-Type: the body must be sent as application/json"
            + (f" (got {media})" if media else "")
        )
    raw = await request.body()
    if _depth_exceeds(raw, max_depth):
        raise _invalid("body", f"JSON nested deeper than {max_depth} levels", "json_invalid")
    try:
        return json.loads(raw, parse_int=_bounded_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid("body", f"invalid JSON: {exc}", "json_invalid") from exc
    except (ValueError, RecursionError) as exc:
        raise _invalid("body", f"invalid JSON: {exc}", "json_invalid") from exc


def parse_last_event_id(value: str | None) -> int:
    """``Last-Event-ID`` as a sequence number (0 when absent); 422 when it is not one."""
    if value is None:
        return 0
    text = value.strip()
    if not _SEQ.fullmatch(text):
        raise _invalid("Last-Event-ID", "must be an event sequence number (up to 18 digits)")
    return int(text)


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float | None = None) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        tokens, then = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise RateLimited(
                f"more than {self.per_minute} requests a minute for this key", max(1, wait)
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget the idlest keys: bounded memory
            for stale in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:5_000]:
                del self._buckets[stale]
