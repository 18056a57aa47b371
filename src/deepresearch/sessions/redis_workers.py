"""Which workers are alive, and what they can take: the cluster half of ``/health``.

Each worker beats every few seconds: it writes ``p:worker:<name>`` (a hash: its
slots, sessions running, when it started, when it beat, its evidence index's
documents and state, whether it can run code and why not, its LLM pool's view of
each backend as single-process ``/health`` shows it: ``BackendState``, URLs without
credentials, as JSON), with a TTL of a few beats, and keeps its name in
``p:workers``. A worker that dies stops beating and its hash expires; ``alive``
drops it from the set when it finds it gone. The cluster's concurrency is the sum
of the live workers' slots.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import cast

from redis.asyncio import Redis

from deepresearch.llm.base import BackendState
from deepresearch.sessions.redis_scripts import RedisKeys

_STATE_FIELDS = frozenset(f.name for f in fields(BackendState))


@dataclass(frozen=True)
class WorkerInfo:
    name: str  # unique per process: host and pid, say
    slots: int  # sessions it may run at once (its DEEPRESEARCH_MAX_CONCURRENT now)
    running: int  # sessions it runs now
    started_at: datetime
    beat_at: datetime
    # What its sessions can use (a worker from before these were beaten: none).
    documents: int = 0  # in its evidence index
    index_building: bool = False
    index_error: str | None = None  # its index build failed
    code_execution: bool = False  # its sandbox runs code
    code_execution_reason: str | None = None  # why not, when it does not
    # Its LLM pool's view of each backend (() offline; None: a worker from before this).
    llm: tuple[BackendState, ...] | None = None

    def index(self) -> dict[str, object]:
        """Its index as ``/health`` shows one (``IndexState.public``)."""
        return {
            "documents": self.documents,
            "building": self.index_building,
            "error": self.index_error,
        }


@dataclass(frozen=True)
class ClusterCapacity:
    workers: int
    slots: int  # the sum of the live workers' slots
    running: int


class RedisWorkers:
    """Worker heartbeats on a Redis client opened with ``decode_responses=True``."""

    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    def _key(self, name: str) -> str:
        return f"{self._keys.prefix}:worker:{name}"

    @property
    def _names(self) -> str:
        return f"{self._keys.prefix}:workers"

    async def beat(self, info: WorkerInfo, *, ttl: float) -> None:
        """Say this worker is alive for ``ttl`` more seconds, with these figures."""
        key = self._key(info.name)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "slots": info.slots,
                    "running": info.running,
                    "started_at": info.started_at.isoformat(),
                    "beat_at": info.beat_at.isoformat(),
                    "documents": info.documents,
                    "index_building": int(info.index_building),
                    "index_error": info.index_error or "",  # "": none
                    "code_execution": int(info.code_execution),
                    "code_execution_reason": info.code_execution_reason or "",
                    "llm": _dump_states(info.llm),
                },
            )
            pipe.pexpire(key, max(1, int(ttl * 1000)))
            pipe.sadd(self._names, info.name)
            await pipe.execute()

    async def leave(self, name: str) -> None:
        """Gone for good (a clean shutdown): no need to wait for the TTL."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(name))
            pipe.srem(self._names, name)
            await pipe.execute()

    async def alive(self) -> list[WorkerInfo]:
        """The workers whose last beat has not expired, by name."""
        # (redis-py types some commands as sync-or-async; the asyncio client awaits them.)
        names = sorted(await cast("Awaitable[set[str]]", self._client.smembers(self._names)))
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._key(name))
            rows: list[dict[str, str]] = await pipe.execute()
        gone = [name for name, row in zip(names, rows, strict=True) if not row]
        if gone:
            await cast("Awaitable[int]", self._client.srem(self._names, *gone))
        return [
            WorkerInfo(
                name=name,
                slots=int(row["slots"]),
                running=int(row["running"]),
                started_at=datetime.fromisoformat(row["started_at"]),
                beat_at=datetime.fromisoformat(row["beat_at"]),
                documents=int(row.get("documents", 0)),
                index_building=row.get("index_building") == "1",
                index_error=row.get("index_error") or None,
                code_execution=row.get("code_execution") == "1",
                code_execution_reason=row.get("code_execution_reason") or None,
                llm=_load_states(row.get("llm")),
            )
            for name, row in zip(names, rows, strict=True)
            if row
        ]

    async def capacity(self) -> ClusterCapacity:
        workers = await self.alive()
        return ClusterCapacity(
            workers=len(workers),
            slots=sum(worker.slots for worker in workers),
            running=sum(worker.running for worker in workers),
        )


def _dump_states(states: tuple[BackendState, ...] | None) -> str:
    """ "": not said (a worker that has no pool view to give)."""
    return "" if states is None else json.dumps([asdict(state) for state in states])


def _load_states(text: str | None) -> tuple[BackendState, ...] | None:
    """The backends a beat carries; fields this version does not know are left out."""
    if not text:
        return None
    return tuple(
        BackendState(**{key: value for key, value in state.items() if key in _STATE_FIELDS})
        for state in json.loads(text)
    )
