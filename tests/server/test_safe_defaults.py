"""Safe defaults: no CORS unless configured, a Host allowlist, bounded bodies, headers,
numbers and JSON, a /health that shows details only to those allowed, a full schema."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from deepresearch.cli import _configure_logging
from tests.server.conftest import MakeSettings
from tests.server.hardened import hardened_app
from tests.support import Process

EVIL = "http://evil.example"


async def test_cors_is_granted_to_no_origin_by_default(make_settings: MakeSettings) -> None:
    async with hardened_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options(
            "/chat/stream",
            headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        listing = await client.get("/sessions", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in listing.headers


async def test_a_cross_site_text_plain_post_starts_nothing(make_settings: MakeSettings) -> None:
    async with hardened_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        for media in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Origin": EVIL} | ({"Content-Type": media} if media else {})
            response = await client.post(
                "/chat/stream", content=b'{"question": "tok-csrf"}', headers=headers
            )
            assert response.status_code == 415, media
            assert "Content-Type" in response.json()["error"]
        assert (await client.get("/sessions")).json()["total"] == 0


async def test_an_unknown_host_name_is_refused_while_keys_are_off(
    make_settings: MakeSettings,
) -> None:
    async with hardened_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        port = urlsplit(url).port
        rebound = await client.get("/sessions", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400 and "Host" in rebound.json()["fields"]
        for name in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert (await client.get("/sessions", headers={"Host": name})).status_code == 200
    chosen = make_settings(allowed_hosts=["research.example"])
    async with hardened_app(chosen) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health", headers={"Host": "research.example"})).is_success
    keyed = make_settings(api_keys=["k" * 16])
    async with hardened_app(keyed) as url, httpx.AsyncClient(base_url=url) as client:
        # With keys on the key is the guard; the server may sit behind any name.
        assert (await client.get("/health", headers={"Host": "anything.example"})).is_success


async def test_a_body_past_the_limit_is_refused_while_it_is_read(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(max_body_bytes=10_000)
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        declared = await client.post("/chat", json={"question": "x" * 20_000})
        assert declared.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"question": "'
            for _ in range(100):  # 1 MB in all, without a Content-Length
                yield b"y" * 10_000
            yield b'"}'

        streamed = await client.post(
            "/chat", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await client.get("/sessions")).json()["total"] == 0


async def test_numbers_past_every_bound_are_422_never_500(make_settings: MakeSettings) -> None:
    async with hardened_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        offset = await client.get("/sessions", params={"offset": 2**63})
        assert offset.status_code == 422 and "query.offset" in offset.json()["fields"]
        huge = "9" * 5000
        body = '{"question": "tok-n", "max_tokens": ' + huge + "}"
        tokens = await client.post(
            "/chat", content=body, headers={"Content-Type": "application/json"}
        )
        assert tokens.status_code == 422 and "max_tokens" in tokens.json()["fields"]
        deep = '{"question": "q", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        nested = await client.post(
            "/chat", content=deep, headers={"Content-Type": "application/json"}
        )
        assert nested.status_code == 422 and "body" in nested.json()["fields"]
        done = (await client.post("/chat", json={"question": "tok-lei"})).json()
        events = f"/sessions/{done['session_id']}/events"
        for value in (str(2**63), "9" * 5000, "-1", "1e3"):
            response = await client.get(events, headers={"Last-Event-ID": value})
            assert response.status_code == 422, value
            assert "Last-Event-ID" in response.json()["fields"]


async def test_slow_headers_are_cut_off_and_a_slow_body_gets_408(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(header_timeout=0.5, body_timeout=0.5)
    async with hardened_app(settings) as url:
        host, port = "127.0.0.1", urlsplit(url).port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # and never the end
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed by the server
        writer.close()

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"question": '
        )
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=10)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        writer.close()


async def test_health_shows_counts_to_all_and_details_to_an_admin(
    make_settings: MakeSettings, tmp_path: object, sim: object
) -> None:
    from pathlib import Path

    keys = Path(str(tmp_path)) / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "ops"\nrole = "admin"\nkey = "admin-key-0001"\n'
        '[[keys]]\nname = "ann"\nrole = "user"\nkey = "user-key-0001"\n'
    )
    sim_url = make_settings().llm_url[0]
    secret_url = sim_url.replace("http://", "http://someone:s3cret@")
    settings = make_settings(keys_file=keys, llm_url=[secret_url])
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        public = (await client.get("/health")).json()
        assert public["status"] == "healthy"
        assert set(public) == {
            "status",
            "agent_config_initialized",
            "active_sessions",
            "queued_sessions",
            "max_concurrent",
            "lock_acquired",
            "llm",
            "index",
            "code_execution",
        }
        assert set(public["llm"]) == {"backends", "healthy"}
        as_user = await client.get("/health", headers={"Authorization": "Bearer user-key-0001"})
        assert "backends" not in as_user.json()["llm"] or isinstance(
            as_user.json()["llm"]["backends"], int
        )
        admin = await client.get("/health", headers={"Authorization": "Bearer admin-key-0001"})
        details = admin.json()
        assert isinstance(details["llm"]["backends"], list) and details["mode"] == "llm"
        assert "code_execution_reason" in details
        for response in (public, as_user.json(), details):
            assert "s3cret" not in str(response)


async def test_the_schema_documents_bodies_and_errors(make_settings: MakeSettings) -> None:
    async with hardened_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        schema = (await client.get("/openapi.json")).json()
        for path in ("/chat", "/chat/stream"):
            post = schema["paths"][path]["post"]
            body = post["requestBody"]["content"]["application/json"]["schema"]
            assert body["properties"]["question"]["maxLength"] == 4000
            assert {"413", "415", "422", "503"} <= set(post["responses"])
        events = schema["paths"]["/sessions/{session_id}/events"]["get"]
        assert "text/event-stream" in events["responses"]["200"]["content"]
        assert {"404", "422"} <= set(events["responses"])


async def test_endless_headers_are_cut_off(make_settings: MakeSettings) -> None:
    async with hardened_app(make_settings()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(url).port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        cut_off = False
        try:
            for _ in range(256):  # 16 MB of one header, which uvicorn alone would take
                writer.write(b"a" * 65536)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), timeout=10)
            cut_off = reply == b"" or reply.startswith(b"HTTP/1.1 431")
        except ConnectionError:
            cut_off = True
        finally:
            writer.close()
        assert cut_off


async def test_backend_errors_never_carry_the_backends_credentials() -> None:
    from deepresearch.errors import BackendError
    from deepresearch.llm.openai import OpenAICompatibleModel

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        model = OpenAICompatibleModel(client, "http://someone:s3cret@backend.example/v1")
        try:
            await model.model_name()
        except BackendError as exc:
            message = str(exc)
        assert "404" in message and "s3cret" not in message and "someone" not in message
        assert "s3cret" not in str(model.states())


async def test_no_log_line_carries_a_backends_credentials(
    make_settings: MakeSettings, sim: Process, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record of a session with a model, at DEBUG, with logging set up as
    ``deepresearch serve`` sets it up (httpx logs each request's full URL at INFO)."""
    url = sim.url.replace("http://", "http://someone:s3cret@", 1)
    settings = make_settings(llm_url=[url])
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    caplog.set_level(logging.DEBUG)
    try:
        _configure_logging(settings)
        async with hardened_app(settings) as served, httpx.AsyncClient(base_url=served) as client:
            answered = await client.post(
                "/chat", json={"question": "tok-logs how is asthma treated?"}
            )
            assert answered.json()["status"] == "completed"
            assert "s3cret" not in (await client.get("/health")).text
    finally:
        httpx_logger.setLevel(level)
    lines = [record.getMessage() for record in caplog.records]
    assert any("127.0.0.1" in line for line in lines)  # backends are named, without credentials
    assert not [line for line in lines if "s3cret" in line or "someone" in line]
