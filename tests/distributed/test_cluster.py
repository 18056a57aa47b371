"""Two API nodes and two workers, real processes on a real Redis, the LLM simulated:
streams on one node replayed identically on the other, a cancel across nodes, a worker
killed mid-run (its sessions resume elsewhere from their last round), Redis restarted
mid-run. Every stream ends with exactly one terminal event, its last."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepresearch.runtime.dispatch import Timings
from tests.distributed.cluster import RECOVERY_SECONDS, Cluster, eventually, sim_requests
from tests.redis_server import RedisServer
from tests.support import TERMINAL, Process, SSEEvent, SSEStream, collect, iter_sse

pytestmark = pytest.mark.timeout(180)

LEASE_TTL = Timings.for_recovery(RECOVERY_SECONDS).lease_ttl
RECONNECT_WINDOW = 6.0


@pytest.fixture(scope="module")
def cluster(
    durable_redis: RedisServer, llm: Process, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    cluster = Cluster(durable_redis, tmp_path_factory.mktemp("cluster"), llm.url, corpus, "c")
    try:
        cluster.start_worker()
        cluster.start_worker()
        cluster.start_node()
        cluster.start_node()
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


def one_terminal_last(stream: SSEStream) -> None:
    terminals = [t for t in stream.types if t in TERMINAL]
    assert len(terminals) == 1 and stream.types[-1] in TERMINAL, stream.types
    # Numbered from 1, always increasing. (Not always contiguous: the default view
    # folds a streamed-text row into the next one of its kind when they come fast,
    # runtime/deltas.py; the same rows give the same wire on any node.)
    ids = [e.id for e in stream.events]
    assert ids[0] == 1 and all(b > a for a, b in itertools.pairwise(ids)), ids


class Reader:
    """One client's SSE stream, read event by event in the background."""

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, **kwargs: object):
        self.events: list[SSEEvent] = []
        self._seen = asyncio.Condition()
        self.task = asyncio.create_task(self._read(client, method, url, kwargs))

    async def _read(
        self, client: httpx.AsyncClient, method: str, url: str, kwargs: dict[str, object]
    ) -> SSEStream:
        async with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
            result = SSEStream(response.status_code)
            async for event in iter_sse(response):
                if event is None:
                    continue
                async with self._seen:
                    self.events.append(event)
                    result.events.append(event)
                    self._seen.notify_all()
                if event.type in TERMINAL:
                    break
            return result

    async def until(self, predicate: object, timeout: float = 60) -> SSEEvent:
        """The first event for which ``predicate(event)`` holds, waiting for it."""
        assert callable(predicate)
        async with asyncio.timeout(timeout), self._seen:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self.task.done():
                    raise AssertionError(f"the stream ended first: {[e.type for e in self.events]}")
                await self._seen.wait()

    @property
    def session_id(self) -> str:
        return str(self.events[0].data["session_id"])

    async def result(self, timeout: float = 90) -> SSEStream:
        async with asyncio.timeout(timeout):
            return await self.task


async def test_sessions_posted_to_one_node_replay_identically_on_the_other(
    cluster: Cluster,
) -> None:
    node_a, node_b = (node.url for node in cluster.nodes)
    async with (
        httpx.AsyncClient(base_url=node_a, timeout=60) as a,
        httpx.AsyncClient(base_url=node_b, timeout=60) as b,
    ):
        questions = [f"What about tok-replay{n}? [sim:rounds={n}] [sim:slow=5]" for n in (1, 2, 3)]
        streams = await asyncio.gather(
            *(collect(a, "POST", "/chat/stream", json={"question": q}) for q in questions)
        )
        ids = []
        for stream in streams:
            assert stream.status == 200
            one_terminal_last(stream)
            assert stream.types[0] == "session_start" and stream.types[-1] == "completed"
            assert "init" in stream.types and "final_answer" in stream.types
            assert "resumed" not in stream.types
            ids.append(stream.events[0].data["session_id"])

        listing = (await b.get("/sessions", params={"status": "completed"})).json()
        assert set(ids) <= set(listing["active_sessions"])
        for session_id, stream in zip(ids, streams, strict=True):
            replay = await collect(b, "GET", f"/sessions/{session_id}/events")
            assert [(e.id, e.data) for e in replay.events] == [
                (e.id, e.data) for e in stream.events
            ]
            record = (await b.get(f"/sessions/{session_id}")).json()
            assert record["status"] == "completed" and "tok-replay" in record["answer"]
            # A client resuming mid-way on the other node gets exactly the rest.
            middle = stream.events[len(stream.events) // 2].id
            rest = await collect(
                b, "GET", f"/sessions/{session_id}/events", headers={"Last-Event-ID": str(middle)}
            )
            assert [(e.id, e.data) for e in rest.events] == [
                (e.id, e.data) for e in stream.events if e.id is not None and e.id > middle
            ]

        health = (await b.get("/health")).json()
        assert health["workers"] == 2
        assert health["max_concurrent"] == 2 * 3  # the sum of the workers' limits
        # Keys are off here, so everyone gets an admin's details: each worker's beat.
        workers = health["cluster"]["workers"]
        assert [w["slots"] for w in workers] == [3, 3]


async def test_cancel_on_one_node_ends_a_stream_on_the_other(cluster: Cluster) -> None:
    node_a, node_b = (node.url for node in cluster.nodes)
    async with (
        httpx.AsyncClient(base_url=node_a, timeout=60) as a,
        httpx.AsyncClient(base_url=node_b, timeout=60) as b,
    ):
        reader = Reader(
            a, "POST", "/chat/stream", json={"question": "tok-long [sim:rounds=50] [sim:slow=20]"}
        )
        await reader.until(lambda e: e.type == "round_start")
        holder = cluster.lease_holder(reader.session_id)
        assert holder is not None  # a worker runs it

        answer = await b.delete(f"/sessions/{reader.session_id}")
        assert answer.status_code == 200
        assert answer.json()["status"] == "cancelled"

        stream = await reader.result()
        one_terminal_last(stream)
        assert stream.types[-1] == "cancelled"
        assert stream.events[-1].data["content"] == "cancelled by the client"

        async def released() -> bool | None:  # the worker lets go once the end is written
            return True if cluster.lease_holder(reader.session_id) is None else None

        await eventually(released, 10, "the worker releases the lease")


async def test_a_killed_workers_sessions_resume_on_the_other_from_their_last_round(
    cluster: Cluster, llm: Process
) -> None:
    rounds = 6  # tool rounds; the answer is one call more
    node_a = cluster.nodes[0].url
    async with httpx.AsyncClient(base_url=node_a, timeout=60) as a:
        before = await sim_requests(a, llm.url)
        readers = [
            Reader(
                a,
                "POST",
                "/chat/stream",
                json={"question": f"tok-kill{n} [sim:rounds={rounds}] [sim:slow=30]"},
            )
            for n in range(2)
        ]
        for reader in readers:
            await reader.until(lambda e: e.type == "round_start" and e.data["round"] == 3)
        holders = {r.session_id: cluster.lease_holder(r.session_id) for r in readers}
        victim = next(iter(holders.values()))
        assert victim is not None
        pid = int(victim.split(":")[1])  # tokens are host:pid:nonce
        cluster.kill_worker(pid)
        killed = [sid for sid, holder in holders.items() if holder and f":{pid}:" in holder]

        streams = [await reader.result() for reader in readers]
        for stream in streams:
            one_terminal_last(stream)
            assert stream.types[-1] == "completed"
            assert stream.types.count("session_start") == 1
        for stream in streams:
            sid = stream.events[0].data["session_id"]
            if sid not in killed:
                assert "resumed" not in stream.types
                continue
            resumed = next(e for e in stream.events if e.type == "resumed")
            assert resumed.data["round"] >= 2  # it went on from a checkpoint...
            after = stream.events[stream.events.index(resumed) :]
            later_rounds = [e.data["round"] for e in after if e.type == "round_start"]
            assert later_rounds and min(later_rounds) == resumed.data["round"] + 1
            record = cluster.record(sid)
            assert record["status"] == "completed"

        # ...so the completed rounds were not asked again: each session made its
        # rounds + 1 calls, plus at most the one in flight when its worker died.
        calls = await sim_requests(a, llm.url) - before
        assert calls <= 2 * (rounds + 1) + len(killed)

    cluster.start_worker()  # back to two for the tests after this one
    cluster.wait_for_workers(2)


async def test_a_worker_killed_in_the_first_round_resumes_with_the_requests_settings(
    cluster: Cluster, llm: Process
) -> None:
    """No checkpoint yet: the next worker runs the session with the request's own
    generation settings (kept on the record), as the simulator records them."""
    marker = "tok-firstround"
    chosen = {"temperature": 0.3, "max_tokens": 999}
    async with httpx.AsyncClient(base_url=cluster.nodes[0].url, timeout=60) as a:
        body = {"question": f"{marker} [sim:rounds=1] [sim:slow=40]", **chosen}
        reader = Reader(a, "POST", "/chat/stream", json=body)
        await reader.until(lambda e: e.type == "thinking")  # round 1 is being asked
        holder = cluster.lease_holder(reader.session_id)
        assert holder is not None
        cluster.kill_worker(int(holder.split(":")[1]))
        stream = await reader.result()
        one_terminal_last(stream)
        assert stream.types[-1] == "completed"
        resumed = next(e for e in stream.events if e.type == "resumed")
        assert resumed.data["round"] == 0  # no checkpoint to go on from
        stats = (await a.get(f"{llm.url.removesuffix('/v1')}/stats")).json()
    asked = stats["asked"][marker]
    assert len(asked) >= 3  # round 1 before the kill, rounds 1 and 2 after it
    assert {(each["temperature"], each["max_tokens"]) for each in asked} == {(0.3, 999)}
    assert (
        cluster.record(reader.session_id)["generation"] == '{"temperature": 0.3, "max_tokens": 999}'
    )
    cluster.start_worker()  # back to two for the tests after this one
    cluster.wait_for_workers(2)


async def test_redis_restarted_mid_run_leaves_nothing_processing(cluster: Cluster) -> None:
    node_a, node_b = (node.url for node in cluster.nodes)
    async with (
        httpx.AsyncClient(base_url=node_a, timeout=90) as a,
        httpx.AsyncClient(base_url=node_b, timeout=90) as b,
    ):
        readers = [
            Reader(
                client,
                "POST",
                "/chat/stream",
                json={"question": f"tok-restart{n} [sim:rounds=3] [sim:slow=30]"},
            )
            for n, client in enumerate((a, b))
        ]
        for reader in readers:
            await reader.until(lambda e: e.type == "round_start")
        await asyncio.to_thread(cluster.redis.restart)

        for reader in readers:
            stream = await reader.result()
            one_terminal_last(stream)
            assert stream.types[-1] in {"completed", "error"}
            if stream.types[-1] == "error":
                assert stream.events[-1].data["content"]  # says why

        async def settled() -> bool | None:
            for status in ("processing", "queued"):
                listing = (await b.get("/sessions", params={"status": status})).json()
                if listing["total"]:
                    return None
            return True

        await eventually(settled, 30, "no session left processing or queued")


async def test_redis_away_longer_than_a_lease_the_sessions_resume_when_it_is_back(
    cluster: Cluster,
) -> None:
    """Redis killed and kept away past the lease TTL and the store's reconnect window:
    the workers lose their leases (and stop writing); once Redis is back, saq
    retries the jobs (or sweeps them) and each session resumes from its checkpoint."""
    node_a = cluster.nodes[0].url
    async with httpx.AsyncClient(base_url=node_a, timeout=120) as a:
        readers = [
            Reader(
                a,
                "POST",
                "/chat/stream",
                json={"question": f"tok-away{n} [sim:rounds=6] [sim:slow=30]"},
            )
            for n in range(2)
        ]
        for reader in readers:
            await reader.until(lambda e: e.type == "round_start" and e.data["round"] == 2)
        cluster.redis.kill()
        # The outage is the scenario: longer than the lease (3 s here) and than the
        # ~5 s a Redis client keeps resending a command.
        await asyncio.sleep(LEASE_TTL + RECONNECT_WINDOW)
        await asyncio.to_thread(cluster.redis.restart)

        for reader in readers:
            stream = await reader.result(120)
            one_terminal_last(stream)
            assert stream.types[-1] == "completed"
            assert stream.types.count("session_start") == 1
            resumed = next(e for e in stream.events if e.type == "resumed")
            assert resumed.data["round"] >= 1


async def test_sigterm_hands_unfinished_sessions_back_to_another_worker(cluster: Cluster) -> None:
    """Graceful shutdown: the worker stops taking jobs, gives its sessions the grace
    period (2 s here), then hands them back: another worker resumes them."""
    node_a = cluster.nodes[0].url
    async with httpx.AsyncClient(base_url=node_a, timeout=60) as a:
        reader = Reader(
            a, "POST", "/chat/stream", json={"question": "tok-term [sim:rounds=8] [sim:slow=30]"}
        )
        await reader.until(lambda e: e.type == "round_start" and e.data["round"] == 2)
        holder = cluster.lease_holder(reader.session_id)
        assert holder is not None
        pid = int(holder.split(":")[1])
        worker = next(w for w in cluster.workers if w.pid == pid)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
        cluster.workers.remove(worker)

        stream = await reader.result()
        one_terminal_last(stream)
        assert stream.types[-1] == "completed"
        resumed = next(e for e in stream.events if e.type == "resumed")
        assert resumed.data["round"] >= 1
    cluster.start_worker()
    cluster.wait_for_workers(2)


async def test_a_session_whose_clients_all_left_is_cancelled_by_its_worker(
    cluster: Cluster,
) -> None:
    """on_disconnect=cancel across processes: the node stops renewing the session's
    watch key when its last follower leaves; the worker sees it gone and cancels."""
    node_a = cluster.nodes[0].url
    async with httpx.AsyncClient(base_url=node_a, timeout=60) as a:
        started = await collect(
            a,
            "POST",
            "/chat/stream",
            json={
                "question": "tok-gone [sim:rounds=50] [sim:slow=20]",
                "on_disconnect": "cancel",
            },
            limit=4,
        )
        session_id = started.events[0].data["session_id"]

        async def ended() -> dict[str, object] | None:
            record = (await a.get(f"/sessions/{session_id}")).json()
            return record if record["status"] not in {"queued", "processing"} else None

        record = await eventually(ended, 30, "the worker cancels the unwatched session")
        assert record["status"] == "cancelled"
        replay = await collect(a, "GET", f"/sessions/{session_id}/events")
        one_terminal_last(replay)
        assert replay.events[-1].data["content"] == "cancelled: the client disconnected"
