"""Distributed mode's admission and give-up paths, real processes on a real Redis: a
session whose runs keep dying ends with one ``error``; per-key quotas and the queue
bound hold across two API nodes posting at once; two follow-ups in one conversation
posted at once to two nodes: one 409; ``/metrics`` on an API node."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.distributed.cluster import ADMIN_KEY, Cluster, eventually
from tests.distributed.test_cluster import Reader, one_terminal_last
from tests.redis_server import RedisServer
from tests.support import Process, collect

pytestmark = pytest.mark.timeout(180)

KEYS = f"""
[[keys]]
name = "alice"
role = "user"
key = "alice-key-for-tests"

[[keys]]
name = "bob"
role = "user"
key = "bob-key-for-tests"

[[keys]]
name = "admin"
role = "admin"
key = "{ADMIN_KEY}"
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(client: httpx.AsyncClient, body: dict[str, object], key: str | None = None) -> int:
    """POST /chat/stream and leave once the answer's status is known (the session, if
    admitted, goes on without us)."""
    headers = bearer(key) if key else {}
    async with client.stream("POST", "/chat/stream", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            assert response.headers.get("retry-after") or response.status_code == 409
        return response.status_code


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def test_per_key_quotas_and_the_queue_bound_hold_across_two_nodes(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path: Path
) -> None:
    """No workers: every session admitted waits. Alice posts 8 at once, half to each
    node, with a quota of 2 waiting per key: exactly 2 are admitted, 6 get 429 with
    Retry-After. Bob's first fits the queue (3 in all), his second finds it full: 503."""
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, corpus, "quota")
    cluster.env.update(
        DEEPRESEARCH_KEYS_FILE=str(keys),
        DEEPRESEARCH_MAX_QUEUED_PER_KEY="2",
        DEEPRESEARCH_MAX_QUEUE="3",
    )
    try:
        node_a, node_b = cluster.start_node(), cluster.start_node()
        async with (
            httpx.AsyncClient(base_url=node_a.url, timeout=30) as a,
            httpx.AsyncClient(base_url=node_b.url, timeout=30) as b,
        ):
            statuses = await asyncio.gather(
                *(
                    post(client, {"question": f"tok-quota{n}"}, "alice-key-for-tests")
                    for n, client in enumerate([a, b] * 4)
                )
            )
            assert sorted(statuses) == [200] * 2 + [429] * 6
            assert await post(b, {"question": "tok-bob0"}, "bob-key-for-tests") == 200
            assert await post(a, {"question": "tok-bob1"}, "bob-key-for-tests") == 503

            listing = (
                await a.get("/sessions", params={"status": "queued"}, headers=bearer(ADMIN_KEY))
            ).json()
            assert listing["total"] == 3

            # /metrics on each node: what it admitted, and the cluster's figures.
            admitted = 0.0
            for client in (a, b):
                answer = await client.get("/metrics", headers=bearer(ADMIN_KEY))
                assert answer.status_code == 200
                admitted += gauge(answer.text, "deepresearch_sessions_admitted_total")
                assert gauge(answer.text, "deepresearch_cluster_queue_length") == 3
                assert gauge(answer.text, "deepresearch_cluster_sessions_running") == 0
                assert gauge(answer.text, "deepresearch_cluster_slots") == 0
                assert gauge(answer.text, "deepresearch_cluster_workers") == 0
            assert admitted == 3
    finally:
        cluster.stop()


async def test_two_follow_ups_posted_at_once_to_two_nodes_one_is_refused(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path: Path
) -> None:
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, corpus, "follow")
    try:
        node_a, node_b = cluster.start_node(), cluster.start_node()
        cluster.start_worker()
        cluster.wait_for_workers(1)
        async with (
            httpx.AsyncClient(base_url=node_a.url, timeout=60) as a,
            httpx.AsyncClient(base_url=node_b.url, timeout=60) as b,
        ):
            first = await collect(a, "POST", "/chat/stream", json={"question": "tok-first"})
            assert first.types[-1] == "completed"
            session_id = first.events[0].data["session_id"]
            for attempt in range(3):  # each round: one turn admitted, one refused
                body = {
                    "question": f"tok-then{attempt} [sim:rounds=2] [sim:slow=20]",
                    "session_id": session_id,
                }
                statuses = await asyncio.gather(post(a, body), post(b, body))
                assert sorted(statuses) == [200, 409]
                turns = (await a.get(f"/sessions/{session_id}")).json()
                conversation = turns.get("conversation_id") or session_id
                listing = (await b.get(f"/conversations/{conversation}")).json()
                sessions = listing.get("turns") or listing.get("sessions") or []
                unfinished = [t for t in sessions if t["status"] in {"queued", "processing"}]
                assert len(unfinished) == 1, sessions
                await a.delete(f"/sessions/{unfinished[0]['session_id']}")
    finally:
        cluster.stop()


async def test_a_session_whose_runs_keep_dying_ends_with_one_error(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path: Path
) -> None:
    """DEEPRESEARCH_JOB_ATTEMPTS=2: its worker is killed twice; the second death
    leaves saq no attempt, and the session ends with one ``error`` saying why."""
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, corpus, "giveup")
    cluster.env["DEEPRESEARCH_JOB_ATTEMPTS"] = "2"
    try:
        node = cluster.start_node()
        for _ in range(3):
            cluster.start_worker()
        cluster.wait_for_workers(3)
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            reader = Reader(
                client,
                "POST",
                "/chat/stream",
                json={"question": "tok-dying [sim:rounds=50] [sim:slow=20]"},
            )
            await reader.until(lambda e: e.type == "round_start")
            sid = reader.session_id
            killed: set[int] = set()
            for death in range(2):

                async def new_holder() -> int | None:
                    holder = cluster.lease_holder(sid)
                    pid = int(holder.split(":")[1]) if holder else None
                    return pid if pid is not None and pid not in killed else None

                pid = await eventually(new_holder, 60, f"a worker runs it (attempt {death + 1})")
                if death == 1:  # the second attempt has begun
                    await reader.until(lambda e: e.type == "resumed")
                cluster.kill_worker(pid)
                killed.add(pid)

            stream = await reader.result()
            one_terminal_last(stream)
            assert stream.types[-1] == "error"
            assert "gave up after 2 attempts to run it" in stream.events[-1].data["content"]
            assert stream.types.count("resumed") == 1

            record = (await client.get(f"/sessions/{sid}")).json()
            assert record["status"] == "failed"
            for status in ("processing", "queued"):
                listing = (await client.get("/sessions", params={"status": status})).json()
                assert listing["total"] == 0
    finally:
        cluster.stop()


async def test_a_free_slot_goes_to_the_key_with_fewest_running(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path: Path
) -> None:
    """One worker with one slot, keys on. Alice's first runs; her second waits, then
    Bob's arrives: Bob is told position 1 and Alice's second moves to 2, and Bob's
    starts first when the slot frees."""
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    cluster = Cluster(durable_redis, tmp_path / "cluster", llm.url, corpus, "fair")
    cluster.env.update(DEEPRESEARCH_KEYS_FILE=str(keys), DEEPRESEARCH_MAX_CONCURRENT="1")
    try:
        node = cluster.start_node()
        cluster.start_worker()
        cluster.wait_for_workers(1)
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            alice, bob = bearer("alice-key-for-tests"), bearer("bob-key-for-tests")
            long, short = "[sim:rounds=4] [sim:slow=100]", "[sim:rounds=1]"
            first = Reader(
                client, "POST", "/chat/stream", json={"question": f"tok-a1 {long}"}, headers=alice
            )
            await first.until(lambda e: e.type == "init")
            second = Reader(
                client, "POST", "/chat/stream", json={"question": f"tok-a2 {short}"}, headers=alice
            )
            await second.until(lambda e: e.type == "queued" and e.data["position"] == 1)
            third = Reader(
                client, "POST", "/chat/stream", json={"question": f"tok-b1 {short}"}, headers=bob
            )
            await third.until(lambda e: e.type == "queued")
            await second.until(lambda e: e.type == "queued" and e.data["position"] == 2)
            streams = [await reader.result() for reader in (first, second, third)]
            for stream in streams:
                one_terminal_last(stream)
                assert stream.types[-1] == "completed"
            bobs = [e.data["position"] for e in streams[2].events if e.type == "queued"]
            assert bobs == [1]
            records = [
                (await client.get(f"/sessions/{s.events[0].data['session_id']}", headers=h)).json()
                for s, h in zip(streams, (alice, alice, bob), strict=True)
            ]
            assert records[2]["started_at"] < records[1]["started_at"]
    finally:
        cluster.stop()
