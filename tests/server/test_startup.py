"""A server that cannot start says why in one line naming the setting."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MakeSettings
from tests.support import running_app
from tests.test_cli import deepresearch


def one_line_naming(stderr: str, setting: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("deepresearch:")]
    assert len(lines) == 1 and setting in lines[0], stderr
    assert "Traceback" not in stderr


def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = deepresearch("serve", cwd=tmp_path, DEEPRESEARCH_DATA_DIR=str(blocker / "data"))
    assert result.returncode == 2
    one_line_naming(result.stderr, "DEEPRESEARCH_DATA_DIR")


def test_a_data_dir_in_use_by_another_server_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with (data / "sessions.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = deepresearch("serve", cwd=tmp_path, DEEPRESEARCH_DATA_DIR=str(data))
    assert result.returncode == 2
    one_line_naming(result.stderr, "DEEPRESEARCH_DATA_DIR")
    assert "another deepresearch process" in result.stderr


def test_a_bad_keys_file_is_named(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("[[keys]]\nname = 'x'\nrole = 'root'\nkey = 'long-enough-key'\n")
    result = deepresearch(
        "serve",
        cwd=tmp_path,
        DEEPRESEARCH_DATA_DIR=str(tmp_path / "data"),
        DEEPRESEARCH_KEYS_FILE=str(keys),
    )
    assert result.returncode == 2
    one_line_naming(result.stderr, "DEEPRESEARCH_KEYS_FILE")


async def test_the_start_up_log_and_health_say_whether_code_can_run(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepresearch")
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        health = (await client.get("/health")).json()
    said = [r.getMessage() for r in caplog.records if "PythonInterpreter" in r.getMessage()]
    assert len(said) == 1
    if health["code_execution"]:
        assert said[0].startswith("PythonInterpreter available")
    else:  # and /health gives the same reason
        assert said[0].startswith("PythonInterpreter disabled")
        assert health["code_execution_reason"] in said[0]
