"""A real full disk: the data dir on a small tmpfs, filled while sessions run (needs
root to mount; elsewhere the store's fault hook test covers the same path)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import TERMINAL, Process, collect, server, write_corpus


@contextlib.contextmanager
def small_tmpfs(folder: Path, megabytes: int) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(filler: Path) -> Path:
    """Write ``filler`` (made beforehand) until the filesystem is full."""
    with filler.open("ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_data_dir_that_fills_up_mid_run(tmp_path: Path, sim: Process) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with (
        small_tmpfs(tmp_path / "disk", 16) as disk,
        server(
            disk / "data",
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=sim.url,
            DEEPRESEARCH_LLM_RETRIES="0",
            DEEPRESEARCH_MAX_CONCURRENT="4",
        ) as process,
    ):
        (disk / "filler").touch()
        async with httpx.AsyncClient(base_url=process.url, timeout=60) as client:
            bodies = [
                {
                    "question": f"tok-disk{n} [sim:slow=20] [sim:rounds=6]",
                    "on_disconnect": "continue",
                }
                for n in range(8)
            ]
            runs = [
                asyncio.create_task(collect(client, "POST", "/chat/stream", json=body))
                for body in bodies
            ]
            deadline = time.monotonic() + 30
            while (await client.get("/health")).json()["active_sessions"] < 4:
                assert time.monotonic() < deadline, "the sessions never started"
                await asyncio.sleep(0.02)  # polling a condition with a deadline
            filler = fill(disk / "filler")
            while_full = await client.post("/chat", json={"question": "tok-full"})
            assert while_full.status_code in {200, 503}, while_full.text
            results = await asyncio.wait_for(asyncio.gather(*runs), timeout=120)
            ids = []
            for result in results:
                terminals = [t for t in result.types if t in TERMINAL]
                assert len(terminals) == 1 and result.types[-1] == terminals[0], result.types
                ids.append(result.events[0].data["session_id"])
            for sid in ids:
                record = (await client.get(f"/sessions/{sid}")).json()
                assert record["status"] not in {"queued", "processing"}, record
            assert (await client.get("/health")).status_code == 200

            filler.unlink()  # space returns: no restart needed
            deadline = time.monotonic() + 30
            while True:
                again = await client.post("/chat", json={"question": "tok-after"})
                if again.status_code == 200:
                    break
                assert again.status_code == 503 and time.monotonic() < deadline, again.text
                await asyncio.sleep(0.2)  # polling a condition with a deadline
            assert again.json()["status"] == "completed"
