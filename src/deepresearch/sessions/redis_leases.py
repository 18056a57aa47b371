"""Session leases in Redis: ``p:lease:<id>`` holds the holder's token, with a TTL.

Taking a free lease is ``SET ... PX`` behind a holder check; renewing and releasing
are compare-and-set scripts, so only the holder can do either. Appends fenced with
the token (``RedisSessionStore.append(..., lease=token)``) check the same key in
the same script as the write.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from deepresearch.sessions import redis_scripts as scripts
from deepresearch.sessions.redis_scripts import RedisKeys


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLeases:
    """``Leases`` on a Redis client opened with ``decode_responses=True`` (the store's)."""

    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)

    async def acquire(self, session_id: str, token: str, ttl: float) -> bool:
        key = self._keys.lease(session_id)
        return bool(await self._acquire(keys=[key], args=[token, _ms(ttl)]))

    async def renew(self, session_id: str, token: str, ttl: float) -> bool:
        key = self._keys.lease(session_id)
        return bool(await self._renew(keys=[key], args=[token, _ms(ttl)]))

    async def release(self, session_id: str, token: str) -> bool:
        return bool(await self._release(keys=[self._keys.lease(session_id)], args=[token]))

    async def holder(self, session_id: str) -> str | None:
        return cast(str | None, await self._client.get(self._keys.lease(session_id)))
