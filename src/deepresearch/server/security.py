"""Who may reach the server from a browser: the Host allowlist and CORS.

With keys off the server trusts whoever reaches it, so it must only be reached
by the people on its machine. Two browser tricks would let any web page a user
visits in: reading responses cross-origin (closed by granting CORS only to
configured origins, none by default) and DNS rebinding (a page's own host name
re-pointed at 127.0.0.1, so the browser thinks it is same-origin; closed by
refusing any ``Host`` header that is not one of this server's names).
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from deepresearch.config import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def allowed_hosts(settings: Settings, keys_on: bool) -> frozenset[str] | None:
    """The Host names accepted, or ``None`` for any."""
    configured = {host.lower().rstrip(".") for host in settings.allowed_hosts}
    if "*" in configured:
        return None
    if not configured and keys_on:
        return None
    if not configured:
        wildcard = settings.host in {"0.0.0.0", "::", ""}
        configured = set() if wildcard else {settings.host.lower()}
    return frozenset(configured | LOOPBACK_NAMES)


def host_name(value: bytes) -> str:
    """``example.org:5006`` -> ``example.org``; ``[::1]:5006`` -> ``[::1]``."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0].rstrip(".") if text.count(":") == 1 else text.rstrip(".")


class HostGuard:
    """Answers 400 to a request whose ``Host`` is not one of the allowed names."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"")
        if host_name(host) in self.hosts:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": "Host: this server does not answer to that name; add it to "
                "DEEPRESEARCH_ALLOWED_HOSTS (or turn on client keys) to serve it",
                "fields": {"Host": "not an allowed host name"},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def add_browser_guards(app: FastAPI, settings: Settings, keys_on: bool) -> None:
    """CORS for the configured origins only, and the Host allowlist."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            # Any request header: OpenAI's browser SDK adds its own (x-stainless-*).
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Session-Id"],
        )
    hosts = allowed_hosts(settings, keys_on)
    if hosts is not None:
        app.add_middleware(HostGuard, hosts=hosts)
