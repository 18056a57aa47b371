from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deepresearch.config import Settings
from tests.support import Process, simulator, write_corpus

MakeSettings = Callable[..., Settings]


@pytest.fixture(scope="session")
def sim() -> Iterator[Process]:
    with simulator() as process:
        yield process


@pytest.fixture
def make_settings(tmp_path: Path, sim: Process) -> MakeSettings:
    corpus = write_corpus(tmp_path / "corpus")

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "corpus": [corpus],
            "llm_url": [sim.url],
            "llm_retries": 0,
            # Seconds of backend silence. Long: a session held by `[sim:hang]` must keep
            # its slot while the test goes on, however slowly a loaded machine runs it
            # (a test of the timeout itself sets a short one).
            "llm_timeout": 60.0,
            "max_concurrent": 2,
            "max_queue": 10,
            "search": ["local"],  # no test talks to the internet
        }
        values.update(overrides)
        return Settings(**values)

    return build
