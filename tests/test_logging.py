"""Where `deepresearch serve` writes its logs: stdout by default, `--log-file` when named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import Process, free_port, wait_until_healthy, write_corpus


def _serve(tmp_path: Path, *args: str) -> tuple[Process, Path]:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEEPRESEARCH_")}
    environment.update(
        DEEPRESEARCH_DATA_DIR=str(tmp_path / "data"),
        DEEPRESEARCH_PORT=str(port),
        DEEPRESEARCH_CORPUS=str(write_corpus(tmp_path / "corpus")),
        DEEPRESEARCH_SEARCH="local",
    )
    out = tmp_path / "stdout.txt"
    with out.open("w") as stdout, (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepresearch.cli", "serve", *args],
            env=environment,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    process = Process(proc, f"http://127.0.0.1:{port}")
    wait_until_healthy(process.url, proc)
    return process, out


def test_logs_go_to_stdout_by_default(tmp_path: Path) -> None:
    process, out = _serve(tmp_path)
    try:
        assert httpx.get(f"{process.url}/sessions").status_code == 200
    finally:
        process.stop()
    text = out.read_text()
    assert "deepresearch: starting on http://" in text
    assert '"GET /sessions HTTP/1.1" 200' in text  # uvicorn's access log, same place


def test_log_file_takes_every_line_and_stdout_stays_quiet(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "server.log"
    log_file.parent.mkdir()
    process, out = _serve(tmp_path, "--log-file", str(log_file))
    try:
        assert httpx.get(f"{process.url}/sessions").status_code == 200
    finally:
        process.stop()
    text = log_file.read_text()
    assert "deepresearch: starting on http://" in text
    assert '"GET /sessions HTTP/1.1" 200' in text
    assert out.read_text() == ""


def test_an_unwritable_log_file_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEEPRESEARCH_")}
    environment["DEEPRESEARCH_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "deepresearch.cli", "serve", "--log-file", str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--log-file" in lines[0], result.stderr
