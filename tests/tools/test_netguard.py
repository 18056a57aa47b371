"""The SSRF guard refuses every non-public destination before any connection.

No test here sends a packet: names resolve through a stub, and connections go
to httpcore's in-memory mock backend, which records where it was asked to go.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import ToolContext
from deepresearch.tools.netguard import (
    GuardedTransport,
    check_url,
    guarded_client,
    is_public_address,
    system_resolver,
)
from deepresearch.tools.visit import VisitTool

PUBLIC = "93.184.216.34"
OK_RESPONSE = [
    b"HTTP/1.1 200 OK\r\n",
    b"Content-Type: text/plain\r\n",
    b"Content-Length: 2\r\n\r\n",
]


class StubResolver:
    """Answers from a table; records every question so tests see what was looked up."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {"public.example": [PUBLIC]}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.table.get(host, [])


class RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], backend: RecordingBackend) -> None:
        super().__init__(buffer)
        self._backend = backend

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self._backend.sni.append(server_hostname)
        return self


class RecordingBackend(httpcore.AsyncMockBackend):
    """The mock network: records each (host, port) it is asked to connect to."""

    def __init__(self, buffer: list[bytes]) -> None:
        super().__init__(buffer)
        self.connects: list[tuple[str, int]] = []
        self.sni: list[str | None] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return RecordingStream([*OK_RESPONSE, b"ok"], self)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.8.9.10:8080/x",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[2002:a00:1::]/",  # 6to4 wrapping 10.0.0.1
    ],
)
async def test_forbidden_addresses_are_refused_without_a_lookup(url: str) -> None:
    resolver = StubResolver()
    with pytest.raises(ToolFailure, match="not a public address"):
        await check_url(url, resolver)
    assert resolver.asked == []


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost:3000/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
async def test_local_names_are_refused_before_resolving(url: str) -> None:
    resolver = StubResolver({"localhost": [PUBLIC], "metadata.google.internal": [PUBLIC]})
    with pytest.raises(ToolFailure, match="local or internal host"):
        await check_url(url, resolver)
    assert resolver.asked == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://public.example/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://public.example/", "only http and https"),
        ("public.example/page", "only http and https"),
        ("http://user:pw@public.example/", "credentials"),
        ("http://user@public.example/", "credentials"),
        ("http:///nohost", "no host"),
    ],
)
async def test_schemes_and_credentials_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ToolFailure, match=reason):
        await check_url(url, StubResolver())


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = StubResolver({"internal.example": ["10.0.0.1"]})
    with pytest.raises(ToolFailure, match="not a public address"):
        await check_url("https://internal.example/", resolver)
    assert resolver.asked == ["internal.example"]


async def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    resolver = StubResolver({"mixed.example": [PUBLIC, "10.0.0.1"]})
    with pytest.raises(ToolFailure, match="not a public address"):
        await check_url("http://mixed.example/", resolver)


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(ToolFailure, match="could not resolve"):
        await check_url("http://nowhere.example/", StubResolver())


async def test_public_hosts_are_allowed() -> None:
    resolver = StubResolver({"public.example": [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]})
    await check_url("https://public.example:8443/path?q=1", resolver)
    await check_url(f"http://{PUBLIC}/", resolver)
    await check_url("http://[::ffff:93.184.216.34]/", resolver)
    assert resolver.asked == ["public.example"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        (PUBLIC, True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("100.127.255.255", False),
        ("192.0.2.1", False),  # documentation range
        ("198.18.0.1", False),  # benchmarking range
        ("255.255.255.255", False),
        ("ff02::1", False),
        ("fec0::1", False),  # deprecated site-local
        ("fe80::1%eth0", False),
    ],
)
def test_address_classes(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


async def test_system_resolver_answers_an_ip_literal_without_dns() -> None:
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


async def test_guarded_transport_connects_to_the_checked_address() -> None:
    backend = RecordingBackend([])
    async with httpx.AsyncClient(transport=GuardedTransport(StubResolver(), backend=backend)) as c:
        response = await c.get("https://public.example/page")
    assert response.text == "ok"
    # Pinned: the socket goes to the address that was checked, while TLS still
    # verifies the certificate for the name.
    assert backend.connects == [(PUBLIC, 443)]
    assert backend.sni == ["public.example"]


async def test_guarded_transport_defeats_dns_rebinding() -> None:
    """A name that was public at check time and private at connect time is refused."""
    answers = [[PUBLIC], ["10.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    backend = RecordingBackend([])
    async with httpx.AsyncClient(transport=GuardedTransport(rebinding, backend=backend)) as c:
        await check_url("http://rebind.example/", rebinding)  # the first answer passes
        with pytest.raises(ToolFailure, match="not a public address"):
            await c.get("http://rebind.example/")
    assert backend.connects == []


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://localhost/", "http://[::1]:8080/"]
)
async def test_guarded_transport_refuses_private_targets_without_connecting(url: str) -> None:
    backend = RecordingBackend([])
    async with httpx.AsyncClient(transport=GuardedTransport(StubResolver(), backend=backend)) as c:
        with pytest.raises(ToolFailure):
            await c.get(url)
    assert backend.connects == []


async def test_guarded_client_keeps_no_cookies_and_follows_no_redirects() -> None:
    class SetsCookie(RecordingBackend):
        async def connect_tcp(self, host: str, port: int, *args: Any, **kw: Any) -> Any:
            self.connects.append((host, port))
            return httpcore.AsyncMockStream(
                [
                    b"HTTP/1.1 302 Found\r\n",
                    b"Location: http://10.0.0.1/\r\n",
                    b"Set-Cookie: session=secret; Path=/\r\n",
                    b"Content-Length: 0\r\n\r\n",
                ]
            )

    backend = SetsCookie([])
    async with guarded_client(StubResolver(), backend=backend) as client:
        response = await client.get("http://public.example/")
        assert response.status_code == 302
        assert len(client.cookies) == 0
    assert backend.connects == [(PUBLIC, 80)]


async def test_visit_over_a_guarded_client_is_pinned_end_to_end() -> None:
    """The visit tool's own check passes, the rebound answer at connect time is refused."""
    answers = {"rebind.example": [[PUBLIC], ["169.254.169.254"]]}

    async def rebinding(host: str, port: int) -> list[str]:
        return answers[host].pop(0) if host in answers else [PUBLIC]

    backend = RecordingBackend([])
    async with guarded_client(rebinding, backend=backend) as client:
        tool = VisitTool(client, resolver=rebinding)
        output = await tool.call(
            {"url": ["http://rebind.example/", "http://public.example/"], "goal": "g"},
            ToolContext("s"),
        )
    assert "http://rebind.example/ could not be read: refusing to visit" in output.text
    assert "[1] http://public.example/ (http://public.example/)\nok" in output.text
    assert backend.connects == [(PUBLIC, 80)]
