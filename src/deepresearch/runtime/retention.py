"""Retention: finished sessions older than ``DEEPRESEARCH_RETENTION_DAYS``, or past the
newest ``DEEPRESEARCH_RETENTION_MAX_SESSIONS``, are deleted (whole conversations, by
the store's ``prune``), once at start-up and then every ``PRUNE_EVERY`` seconds."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Protocol

from deepresearch.events import utc_now
from deepresearch.tasks import stop_task

log = logging.getLogger("deepresearch.sessions")

PRUNE_EVERY = 600.0


class Prunable(Protocol):
    async def prune(self, *, older_than: datetime, keep: int) -> int: ...


class Retention:
    """Prunes a session store now and then (``start``/``stop``), or once (``prune``)."""

    def __init__(
        self, store: Prunable, *, days: float, keep: int, every: float = PRUNE_EVERY
    ) -> None:
        self._store = store
        self._days = days
        self._keep = keep
        self._every = every
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """One pass; how many sessions were removed (a failure is logged: 0)."""
        try:
            removed = await self._store.prune(
                older_than=utc_now() - timedelta(days=self._days), keep=self._keep
            )
        except Exception:
            log.exception("retention: pruning failed")
            return 0
        if removed:
            log.info("retention: removed %d old sessions", removed)
        return removed

    def start(self) -> None:
        """Prune every ``every`` seconds until ``stop``."""
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.prune()
