"""A DELETE that arrives while its session's record is still being written cancels it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from deepresearch.server import create_app
from deepresearch.services import Services
from tests.server.conftest import MakeSettings
from tests.server.hardened import serving
from tests.support import collect


async def test_a_delete_right_after_a_post_cancels_the_session(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    app = create_app(settings)
    async with serving(app, settings) as url, httpx.AsyncClient(base_url=url) as client:
        services: Services = app.state.services
        store: Any = services.manager.store
        writing, release = asyncio.Event(), asyncio.Event()
        create = store.create

        async def slow_create(record: Any) -> None:
            writing.set()
            await release.wait()  # the record is being written while the DELETE arrives
            await create(record)

        store.create = slow_create
        body = {"question": "tok-race [sim:slow=20]", "session_id": "race-session-0001"}
        posting = asyncio.create_task(collect(client, "POST", "/chat/stream", json=body))
        await writing.wait()
        deleting = asyncio.create_task(client.delete("/sessions/race-session-0001"))
        live = services.manager._live["race-session-0001"]
        while not live.cancel_requested:  # the DELETE has reached the manager
            assert not deleting.done(), deleting.result().text
            await asyncio.sleep(0.01)
        assert not deleting.done()  # it waits for the record rather than answering 409
        release.set()
        deleted, stream = await asyncio.gather(deleting, posting)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["status"] == "cancelled"
        assert stream.types[0] == "session_start" and stream.types[-1] == "cancelled"
        assert [t for t in stream.types if t in {"completed", "cancelled"}] == ["cancelled"]
