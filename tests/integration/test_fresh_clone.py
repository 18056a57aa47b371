"""The README's `make serve` works from a fresh clone (CI runs `make test` itself so)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port, wait_until_healthy

# A clone, a venv, an install and an index build: about a minute on a quiet machine,
# several on a loaded one. The suite's default limit (120 s) is too short for that.
pytestmark = pytest.mark.timeout(900)


def wait_for_index(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        health: dict[str, Any] = httpx.get(f"{url}/health").json()
        if not health["index"]["building"] and health["index"]["documents"]:
            return health
        time.sleep(0.1)  # polling a condition with a deadline
    raise AssertionError("the evidence index was not built in time")


def test_make_serve_from_a_fresh_clone_answers_a_question(tmp_path: Path) -> None:
    clone = tmp_path / "main"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    # The clone sees the shared data where a developer's checkout does: ../shared.
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEEPRESEARCH_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["DEEPRESEARCH_SEARCH"] = "local"  # no test talks to the internet
    log = (tmp_path / "serve.log").open("w")
    # `make serve` installs first (minutes); the port is chosen once that is done, so
    # that no other test's server can take it meanwhile. `make serve` then finds the
    # install done and starts at once.
    installed = subprocess.run(
        ["make", "install"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
    )
    assert installed.returncode == 0, (tmp_path / "serve.log").read_text()[-4000:]
    port = free_port()
    env["DEEPRESEARCH_PORT"] = str(port)
    proc = subprocess.Popen(
        ["make", "serve"],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, timeout=300, output=(tmp_path / "serve.log").read_text)
        health = wait_for_index(url)
        assert health["mode"] == "offline" and health["index"]["documents"] > 10_000
        answer = httpx.post(
            f"{url}/chat", json={"question": "How is hypertension treated?"}, timeout=120
        ).json()
        assert answer["status"] == "completed"
        assert answer["citations"] and re.search(r"\[\d+\]", answer["answer"])
        assert (clone / ".deepresearch" / "sessions.sqlite").exists()
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert httpx.get(f"{url}/static/app.js").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
