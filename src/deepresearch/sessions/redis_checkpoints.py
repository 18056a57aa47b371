"""Agent checkpoints in Redis: ``p:checkpoint:<id>``, one JSON string per session.

A save is refused (``LeaseLost``) when it names a lease token that no longer holds
the session's lease, and (``SessionNotFound``) when the session is gone. The key
expires with its conversation (see ``redis_scripts.WRITE``).
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from deepresearch.errors import LeaseLost, SessionNotFound
from deepresearch.sessions import redis_scripts as scripts
from deepresearch.sessions.checkpoints import Checkpoint
from deepresearch.sessions.redis_scripts import RedisKeys


class RedisCheckpointStore:
    """``CheckpointStore`` on a Redis client opened with ``decode_responses=True``."""

    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._save = client.register_script(scripts.SAVE_CHECKPOINT)

    async def open(self) -> None:
        """Nothing to do: the client belongs to the session store."""

    async def close(self) -> None:
        """Nothing to do: the client belongs to the session store."""

    async def save(self, checkpoint: Checkpoint, *, lease: str | None = None) -> None:
        session_id = checkpoint.session_id
        keys = [
            self._keys.session(session_id),
            self._keys.checkpoint(session_id),
            self._keys.lease(session_id),
        ]
        try:
            await self._save(keys=keys, args=[lease or "", checkpoint.to_json()])
        except ResponseError as exc:
            message = str(exc)
            if message.startswith("LEASELOST"):
                raise LeaseLost(f"checkpoint of {session_id}: {message}") from exc
            if message.startswith("NOSESSION"):
                raise SessionNotFound(f"checkpoint of {session_id}: {message}") from exc
            raise

    async def load(self, session_id: str) -> Checkpoint | None:
        data = cast(str | None, await self._client.get(self._keys.checkpoint(session_id)))
        return Checkpoint.from_json(session_id, data) if data is not None else None

    async def delete(self, session_id: str) -> None:
        await self._client.delete(self._keys.checkpoint(session_id))
