"""The real app under uvicorn with the connection bounds ``serve`` uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from deepresearch.config import Settings
from deepresearch.server import create_app
from deepresearch.server.limits import server_options
from tests.support import free_port


@asynccontextmanager
async def hardened_app(settings: Settings, **app_options: Any) -> AsyncIterator[str]:
    async with serving(create_app(settings, **app_options), settings) as url:
        yield url


@asynccontextmanager
async def serving(app: FastAPI, settings: Settings) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **server_options(settings.header_timeout),
    )
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    try:
        while not instance.started:
            assert not task.done(), "server failed to start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        await task
