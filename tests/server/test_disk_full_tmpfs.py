"""A real full disk: the data dir on a small tmpfs, filled while sessions run, as root
or not (then in namespaces of the server's own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support import TERMINAL, Process, collect, server, write_corpus


class SmallDisk:
    """A small tmpfs at ``folder`` for the server's data dir. As root it is mounted
    here; otherwise in a user and mount namespace of the server's own (``unshare``:
    the server runs as its namespace's root, which may mount), and the test reaches
    it with ``nsenter`` to fill and free it. Either way a real filesystem fills up."""

    def __init__(self, folder: Path, megabytes: int) -> None:
        self.folder = folder
        self.options = f"size={megabytes}m,mode=0700"
        self.root = os.geteuid() == 0
        self.server_pid: int | None = None
        self.wrap: list[str] = []  # what the server runs under (as root: nothing)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[SmallDisk]:
        self.folder.mkdir()
        if not self.root:
            mount = f'mount -t tmpfs -o {self.options} tmpfs "$0" && exec "$@"'
            self.wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount]
            self.wrap.append(str(self.folder))
            yield self
            return
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.folder)], check=True
        )
        try:
            yield self
        finally:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)

    def _shell(self, script: str, path: Path) -> subprocess.CompletedProcess[str]:
        enter: list[str] = []
        if not self.root:
            assert self.server_pid is not None
            # Keeping our credentials: the namespace's root is us (``--map-root-user``
            # denies setgroups there, which entering it with new credentials would call).
            enter = ["nsenter", "--target", str(self.server_pid), "--user", "--mount"]
            enter.append("--preserve-credentials")
        return subprocess.run(
            [*enter, "sh", "-c", script, str(path)], capture_output=True, text=True, check=False
        )

    def fill(self, filler: Path) -> None:
        """Write ``filler`` until the filesystem is full."""
        filled = self._shell('cat /dev/zero > "$0"', filler)
        assert "No space left on device" in filled.stderr, filled.stderr

    def free(self, filler: Path) -> None:
        removed = self._shell('rm "$0"', filler)
        assert removed.returncode == 0, removed.stderr


async def test_a_data_dir_that_fills_up_mid_run(tmp_path: Path, sim: Process) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    small = SmallDisk(tmp_path / "disk", 16)
    with (
        small.mounted(),
        server(
            small.folder / "data",
            small.wrap,
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=sim.url,
            DEEPRESEARCH_LLM_RETRIES="0",
            DEEPRESEARCH_MAX_CONCURRENT="4",
        ) as process,
    ):
        small.server_pid = process.proc.pid
        filler = small.folder / "filler"
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
            small.fill(filler)
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

            small.free(filler)  # space returns: no restart needed
            deadline = time.monotonic() + 30
            while True:
                again = await client.post("/chat", json={"question": "tok-after"})
                if again.status_code == 200:
                    break
                assert again.status_code == 503 and time.monotonic() < deadline, again.text
                await asyncio.sleep(0.2)  # polling a condition with a deadline
            assert again.json()["status"] == "completed"
