"""Stopping a background task: cancel it and wait until it has stopped."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end; an error it ended with is raised."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
