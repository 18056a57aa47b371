"""Following a session from a route until it ends."""

from __future__ import annotations

import asyncio

from fastapi import Request

from deepresearch.services import Services
from deepresearch.sessions.records import SessionRecord


async def wait_for_end(
    request: Request, svc: Services, session_id: str, who: str | None
) -> SessionRecord:
    """Follow the session to its end (or until the client leaves); its record then."""

    async def drain() -> None:
        async for _ in svc.manager.follow(session_id):
            pass

    # Nothing cancels a plain handler when its client leaves, so watch for it: the
    # session's on_disconnect policy must apply here as it does to streams.
    finished = asyncio.create_task(drain())
    gone = asyncio.create_task(disconnected(request))
    await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (finished, gone):
        task.cancel()
    await asyncio.gather(finished, gone, return_exceptions=True)
    return await svc.manager.get(session_id, who)


async def disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
