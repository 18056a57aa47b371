"""``/health`` in distributed mode tells the truth about the workers, real processes on
a real Redis: the API node builds no index and checks no sandbox of its own; the
workers' beats carry their index and whether they can run code; the open view says
what every worker has (the smallest index, code only when every worker runs it),
and an admin sees each worker's and the reasons."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.distributed.cluster import ADMIN_KEY, Cluster, eventually
from tests.redis_server import RedisServer
from tests.support import Process

pytestmark = pytest.mark.timeout(120)

KEYS = f"""
[[keys]]
name = "admin"
role = "admin"
key = "{ADMIN_KEY}"
"""


def worker_named(workers: list[dict[str, Any]], proc: subprocess.Popen[str]) -> dict[str, Any]:
    """A worker's entry in /health's details: its name ends with its pid."""
    [entry] = [w for w in workers if w["name"].endswith(f":{proc.pid}")]
    return entry


async def test_health_reports_the_live_workers_index_and_sandbox(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, corpus, "health")
    cluster.env["DEEPRESEARCH_KEYS_FILE"] = str(keys)
    try:
        node = cluster.start_node()  # its settings name the corpus too
        # One worker with the corpus; one with none and no bubblewrap to find.
        stocked = cluster.start_worker()
        bare = cluster.start_worker(
            DEEPRESEARCH_CORPUS=str(tmp_path / "no-corpus"), PATH=str(tmp_path / "no-bin")
        )
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:

            async def both_ready() -> dict[str, Any] | None:
                health: dict[str, Any] = (await client.get("/health", headers=admin)).json()
                workers = health.get("cluster", {}).get("workers", [])
                if len(workers) == 2 and not any(w["index"]["building"] for w in workers):
                    return health
                return None

            details = await eventually(both_ready, 60, "two workers with their index built")
            public = (await client.get("/health")).json()

        # The node built no index and made no sandbox check: the workers did.
        assert not (cluster.node_dirs[0] / "index.sqlite").exists()
        node_log = (tmp_path / "cluster" / "node-1.log").read_text()
        assert "evidence index" not in node_log and "PythonInterpreter" not in node_log

        workers = details["cluster"]["workers"]
        stocked_entry, bare_entry = worker_named(workers, stocked), worker_named(workers, bare)
        assert stocked_entry["index"]["documents"] > 0 and stocked_entry["index"]["error"] is None
        assert bare_entry["index"] == {"documents": 0, "building": False, "error": None}
        assert bare_entry["code_execution"] is False and bare_entry["code_execution_reason"]

        # Anyone: status and counts, what every live worker has.
        assert public["workers"] == 2
        assert public["index"] == {"building": False, "documents": 0}  # the smallest
        assert public["code_execution"] is False  # not every worker can run code
        assert "cluster" not in public and "code_execution_reason" not in public
        # An admin: the same figures, and why.
        assert details["index"] == {"building": False, "documents": 0, "error": None}
        assert details["code_execution"] is False
        reason = details["code_execution_reason"]
        for entry in workers:  # names every worker that cannot run code, and only those
            assert (entry["name"] in reason) is (not entry["code_execution"])
    finally:
        cluster.stop()
