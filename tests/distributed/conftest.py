"""One Redis (with its append-only file, so it can be restarted mid-run) and one LLM
simulator for the distributed tests; each test module builds its cluster on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.support import Process, simulator, write_corpus


@pytest.fixture(scope="package")
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-durable"), persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def llm() -> Iterator[Process]:
    with simulator() as sim:
        yield sim


@pytest.fixture(scope="package")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))
