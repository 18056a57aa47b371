"""SSRF protection for tools that fetch URLs the model chose.

A model can be talked (by a page it read) into asking for ``http://169.254.169.254/``
or an intranet host, so every URL is checked before it is requested, and every
address a name resolves to must be public.

Two layers:

- ``check_url`` runs before each request and each redirect hop: scheme, userinfo,
  forbidden names, and the addresses the host resolves to.
- ``GuardedTransport`` (and ``guarded_client``) pins the connection: its network
  backend resolves the name itself, checks every address, and connects to a
  checked address, so a DNS answer that changes between ``check_url`` and the
  connect (DNS rebinding) cannot reach a private address. TLS still verifies the
  certificate against the name (httpcore passes the URL's host as SNI).

The remaining gap: a client built without ``GuardedTransport`` is protected by
``check_url`` alone, and there a name that resolves to a public address at check
time and a private one at connect time (a TTL-0 rebinding attack) gets through.
Production should use ``guarded_client``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpcore
import httpx

from deepresearch.errors import ToolFailure

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> [ip, ...]``: every address the name resolves to."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": 80, "https": 443}
_FORBIDDEN_NAMES = {"localhost", "metadata.google.internal", "metadata"}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the OS resolver, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # gaierror mostly; any of them means "cannot go there"
        raise ToolFailure(f"could not resolve {host}: {exc.strerror or exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(ip: IPAddress) -> bool:
    """True only for a globally routable unicast address.

    ``is_global`` alone is not enough: its meaning has shifted between Python
    releases and it calls multicast global, so each class is also checked.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the kernel connects to the IPv4 address inside
            return is_public_address(ip.ipv4_mapped)
        embedded = [ip.sixtofour, *(ip.teredo or ())]  # tunnels that carry an IPv4 address
        if any(v4 is not None and not is_public_address(v4) for v4 in embedded):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in _CGNAT
    )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host_name(host: str) -> None:
    name = host.lower().rstrip(".")
    if not name:
        raise ToolFailure("the URL has no host")
    if name in _FORBIDDEN_NAMES or name.endswith(".localhost"):
        raise ToolFailure(f"refusing to visit {host}: a local or internal host")


def _check_static(url: str) -> tuple[str, int]:
    """Everything decidable without DNS; returns the (ASCII) host and port."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolFailure(f"not a valid URL: {url!r}") from exc
    if parsed.scheme not in _SCHEMES:
        raise ToolFailure(f"refusing to visit {url!r}: only http and https URLs can be visited")
    if parsed.userinfo:
        raise ToolFailure(f"refusing to visit {url!r}: URLs with credentials are not allowed")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, what DNS is asked
    _check_host_name(host)
    return host, parsed.port or _SCHEMES[parsed.scheme]


async def public_addresses(host: str, port: int, resolve: Resolver) -> list[str]:
    """The host's addresses, or ``ToolFailure`` unless every one of them is public."""
    _check_host_name(host)
    literal = _ip_literal(host)
    addresses = [host] if literal is not None else await resolve(host, port)
    if not addresses:
        raise ToolFailure(f"could not resolve {host}")
    for address in addresses:
        ip = _ip_literal(address)
        # One private answer is enough to refuse: the connect may pick any of them.
        if ip is None or not is_public_address(ip):
            raise ToolFailure(f"refusing to visit {host}: it is not a public address")
    return addresses


async def check_url(url: str, resolve: Resolver) -> None:
    """Raise ``ToolFailure`` unless ``url`` is http(s) to a public host."""
    host, port = _check_static(url)
    await public_addresses(host, port, resolve)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to checked public addresses of the requested name."""

    def __init__(
        self, resolve: Resolver, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._resolve = resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await public_addresses(host, port, self._resolve)
        error: Exception | None = None
        for address in addresses:  # connect to what was checked, never the name
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # public_addresses never returns an empty list
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ToolFailure("refusing to connect to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An HTTP transport that checks every request and pins its connection.

    No proxy: a proxy resolves names itself, which would undo the pinning.
    """

    def __init__(
        self,
        resolve: Resolver | None = None,
        *,
        backend: httpcore.AsyncNetworkBackend | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        # httpx offers no public hook for the network backend, so the pool it built
        # is replaced by an equal one with the pinning backend. Fail loudly if a new
        # httpx stores its pool elsewhere: the replacement would silently not apply.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version keeps no _pool; GuardedTransport needs one")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(resolve or system_resolver, backend),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_static(str(request.url))  # addresses are checked at connect time
        return await super().handle_async_request(request)


def guarded_client(
    resolve: Resolver | None = None,
    *,
    backend: httpcore.AsyncNetworkBackend | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """An ``AsyncClient`` for fetching untrusted URLs.

    It pins connections, ignores proxy variables, follows no redirects by itself,
    and keeps no cookies, so one session's visits leave nothing for another's.
    ``backend`` is the network under the pinning (tests pass httpcore's mock).
    """
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        transport=GuardedTransport(resolve, backend=backend),
        trust_env=False,
        follow_redirects=False,
        cookies=jar,
        **options,
    )
