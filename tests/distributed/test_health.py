"""``/health`` in distributed mode tells the truth about the workers, real processes on
a real Redis: the API node builds no index and checks no sandbox of its own; the
workers' beats carry their index and whether they can run code; the open view says
what every worker has (the smallest index, code only when every worker runs it),
and an admin sees each worker's and the reasons. ``llm`` is the workers' view of
the backends too: a backend counts healthy when some live worker's pool sees it so."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepresearch.llm.base import public_url
from tests.distributed.cluster import ADMIN_KEY, Cluster, eventually
from tests.redis_server import RedisServer
from tests.support import Process, free_port

pytestmark = pytest.mark.timeout(120)

KEYS = f"""
[[keys]]
name = "admin"
role = "admin"
key = "{ADMIN_KEY}"
"""
SECRET = "s3cret-in-the-url"


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


async def test_health_reports_the_workers_view_of_the_llm_backends(
    durable_redis: RedisServer, llm: Process, tmp_path: Path
) -> None:
    """One worker calls the simulator, the other a URL nothing listens on (with a
    password in it): /health counts the backends the workers use, healthy when some
    worker's pool sees it so, and never shows the password."""
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    empty = tmp_path / "no-corpus"  # no index to build: the test is about the models
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, empty, "health-llm")
    cluster.env |= {"DEEPRESEARCH_KEYS_FILE": str(keys), "DEEPRESEARCH_CORPUS": str(empty)}
    dead_url = f"http://probe:{SECRET}@127.0.0.1:{free_port()}/v1"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        node = cluster.start_node()  # configured with the simulator: its own view is not asked
        dead = cluster.start_worker(DEEPRESEARCH_LLM_URL=dead_url, DEEPRESEARCH_LLM_RETRIES="0")
        cluster.wait_for_workers(1)
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            # Alone, the dead worker takes the session: its call fails, its pool says so.
            failed = await client.post("/chat", json={"question": "What is anemia?"}, headers=admin)
            assert failed.json()["status"] == "failed"
            live = cluster.start_worker()
            cluster.wait_for_workers(2)

            async def live_worker_has_called_its_model() -> dict[str, Any] | None:
                """A session more (either worker may take it), then the admin's view
                once the live worker's pool has seen its backend answer."""
                await client.post("/chat", json={"question": "What is anemia?"}, headers=admin)
                health: dict[str, Any] = (await client.get("/health", headers=admin)).json()
                entry = worker_named(health["cluster"]["workers"], live)
                return health if entry["llm"][0]["healthy"] else None

            details = await eventually(
                live_worker_has_called_its_model, 60, "a session on the live worker", every=0
            )
            public = (await client.get("/health")).json()
            texts = [(await client.get("/health", headers=admin)).text, str(public)]

        # Anyone: the contract's counts, the workers' backends: 2 used, 1 healthy.
        assert public["llm"] == {"backends": 2, "healthy": 1}
        # An admin: each backend once, combined over the workers, and each worker's view.
        by_url = {backend["url"]: backend for backend in details["llm"]["backends"]}
        assert details["llm"]["configured"] is True and details["llm"]["healthy"] == 1
        assert set(by_url) == {public_url(llm.url), public_url(dead_url)}
        assert by_url[public_url(llm.url)]["healthy"] is True
        assert by_url[public_url(llm.url)]["workers_healthy"] == 1
        gone = by_url[public_url(dead_url)]
        assert gone["healthy"] is False and gone["workers_healthy"] == 0
        assert gone["last_error"].startswith(
            worker_named(details["cluster"]["workers"], dead)["name"]
        )
        [dead_view] = worker_named(details["cluster"]["workers"], dead)["llm"]
        assert dead_view["url"] == public_url(dead_url) and dead_view["healthy"] is False
        [live_view] = worker_named(details["cluster"]["workers"], live)["llm"]
        assert live_view["url"] == public_url(llm.url) and live_view["healthy"] is True
        # The password in the dead worker's URL is nowhere.
        assert all(SECRET not in text for text in texts)
    finally:
        cluster.stop()
