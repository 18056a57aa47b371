"""Leases: which worker runs a session, for how long unless it says it is alive.

A runner takes a session's lease with a token of its own (``acquire``) and a TTL,
keeps it with a ``Heartbeat`` (``renew`` every third of the TTL), and lets go when
the session ends (``release``). A worker that dies stops renewing; once the TTL has
passed another worker may take the lease, and the old token's appends are refused
(``RedisSessionStore.append(..., lease=token)``). Only the holder can renew or
release, so a late renewal from a worker that already lost the lease cannot steal
it back.

``LocalLeases`` is the same thing in one process (the single-process server);
``RedisLeases`` (in ``redis_leases.py``) is the cluster-wide one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Protocol

from deepresearch.errors import LeaseLost
from deepresearch.tasks import stop_task

log = logging.getLogger(__name__)


class Leases(Protocol):
    async def acquire(self, session_id: str, token: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if it is free (or already ours: then
        extend it); False if someone else holds it."""

    async def renew(self, session_id: str, token: str, ttl: float) -> bool:
        """Extend our lease to ``ttl`` seconds from now; False if it is not ours
        any more (expired, or taken by another)."""

    async def release(self, session_id: str, token: str) -> bool:
        """Let go of our lease; False if it was not ours."""

    async def holder(self, session_id: str) -> str | None:
        """The token holding the lease, or None."""


async def check_held(leases: Leases, session_id: str, token: str) -> None:
    """``LeaseLost`` unless ``token`` holds the session's lease."""
    holder = await leases.holder(session_id)
    if holder != token:
        raise LeaseLost(f"session {session_id} is leased to {holder or 'nobody'}, not {token}")


class LocalLeases:
    """Leases in this process's memory, timed by the event loop's clock."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}  # session -> (token, deadline)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def holder(self, session_id: str) -> str | None:
        held = self._held.get(session_id)
        if held is None:
            return None
        if held[1] <= self._now():
            del self._held[session_id]
            return None
        return held[0]

    async def acquire(self, session_id: str, token: str, ttl: float) -> bool:
        if await self.holder(session_id) not in (None, token):
            return False
        self._held[session_id] = (token, self._now() + ttl)
        return True

    async def renew(self, session_id: str, token: str, ttl: float) -> bool:
        if await self.holder(session_id) != token:
            return False
        self._held[session_id] = (token, self._now() + ttl)
        return True

    async def release(self, session_id: str, token: str) -> bool:
        if await self.holder(session_id) != token:
            return False
        del self._held[session_id]
        return True


class Heartbeat:
    """Keeps a lease alive while its session runs (``async with``).

    Renews every ``ttl / 3`` seconds. ``lost`` is set, and the beating stops, when a
    renewal is refused (another worker holds the lease) or when no renewal has
    succeeded for a whole TTL (the store is unreachable: the lease has lapsed).
    The runner watches ``lost`` and stops its session without writing more. On
    exit the lease is released unless ``release`` is False (a worker handing a
    session back keeps nothing either way: a released lease is free at once).
    """

    def __init__(
        self,
        leases: Leases,
        session_id: str,
        token: str,
        ttl: float,
        *,
        interval: float | None = None,
        release: bool = True,
    ) -> None:
        self._leases = leases
        self.session_id = session_id
        self.token = token
        self._ttl = ttl
        self._interval = interval if interval is not None else ttl / 3
        self._release = release
        self.lost = asyncio.Event()
        self.renewals = 0  # successful renewals so far
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat {self.session_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await stop_task(self._task)
        if self._release and not self.lost.is_set():
            with contextlib.suppress(Exception):  # it lapses by itself if this fails
                await self._leases.release(self.session_id, self.token)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        while True:
            await asyncio.sleep(self._interval)
            try:
                renewed = await self._leases.renew(self.session_id, self.token, self._ttl)
            except Exception as exc:  # unreachable store: keep trying until the TTL is up
                log.warning("lease renewal for %s failed: %s", self.session_id, exc)
                if loop.time() - last_renewed < self._ttl:
                    continue
                renewed = False
            if not renewed:
                log.warning("lease of session %s lost by %s", self.session_id, self.token)
                self.lost.set()
                return
            last_renewed = loop.time()
            self.renewals += 1
