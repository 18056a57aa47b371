"""One Redis (with its append-only file, so it can be restarted mid-run) and one LLM
simulator for the distributed tests; each test module builds its cluster on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# How much of each process's log a failed test shows.
LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failed test here shows the last lines of its cluster's logs (nodes, workers),
    so a failure on a CI machine says what the processes did."""
    outcome: Any = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when != "call" or not report.failed or tmp_path is None:
        return
    for log in sorted(Path(tmp_path).rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append((f"{log.relative_to(tmp_path)} (last lines)", "\n".join(lines)))
