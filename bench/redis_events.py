"""What one event costs Redis: the figures behind docs/deploy.md's paper estimate.

Starts its own redis-server (Debian's, no persistence) on a free loopback port and
drives the real ``RedisSessionStore``:

1. server commands per appended event (``INFO commandstats``), one fenced event
   per append as a worker writes while streaming, and in batches of 10;
2. worker → follower: S sessions, each with a writer appending E events one at a
   time and a follower, either in its own ``tail`` loop (an ``XREAD BLOCK`` each) or
   subscribed to one ``TailHub`` (one ``XREAD BLOCK`` for all); events/s delivered,
   the delay from append to receipt, redis-server CPU per event;
3. memory: per finished session (record, indexes, a 13-event stream), per further
   stream entry, and per follower blocked in ``XREAD`` (server side).

Run: ``.venv/bin/python bench/redis_events.py`` (about half a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepresearch.sessions import SessionRecord, StoredEvent  # noqa: E402
from deepresearch.sessions.redis import RedisSessionStore  # noqa: E402
from deepresearch.sessions.redis_tails import TailHub  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

PAYLOAD = "x" * 240  # a typical stored delta row is 200-400 bytes of JSON


def event(seq: int, sent: float | None = None) -> StoredEvent:
    data = json.dumps({"seq": seq, "sent": sent or 0.0, "delta": PAYLOAD})
    return StoredEvent(seq, "thinking", data)


def record(session_id: str) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        question="Does aspirin prevent stroke in adults over seventy?",
        status="processing",
        created_at=datetime.now(UTC),
        owner="owner-digest",
    )


async def commandstats(store: RedisSessionStore) -> dict[str, int]:
    stats: dict[str, Any] = await store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def used_memory(store: RedisSessionStore) -> int:
    await store.client.execute_command("MEMORY", "PURGE")  # type: ignore[no-untyped-call]
    info: dict[str, Any] = await store.client.info("memory")
    return int(info["used_memory"])


async def redis_cpu(store: RedisSessionStore) -> float:
    info: dict[str, Any] = await store.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def commands_per_event(store: RedisSessionStore, batch: int, events: int) -> None:
    session_id = f"ops-{batch}"
    await store.create(record(session_id))
    await store.leases().acquire(session_id, "worker", ttl=60)
    before = await commandstats(store)
    cpu_before = await redis_cpu(store)
    for first in range(1, events + 1, batch):
        await store.append(
            session_id, [event(seq) for seq in range(first, first + batch)], lease="worker"
        )
    cpu = await redis_cpu(store) - cpu_before
    after = await commandstats(store)
    calls = {name: after[name] - before.get(name, 0) for name in after}
    calls = {name: n for name, n in calls.items() if n and name != "info"}
    inside = sum(n for name, n in calls.items() if name not in ("evalsha", "eval"))
    print(
        f"  batch of {batch:>2}: {calls.get('evalsha', 0) / events:.2f} round trips and "
        f"{inside / events:.2f} commands inside the script per event, "
        f"redis-server CPU {cpu / events * 1e6:.0f} µs per event  "
        f"({', '.join(f'{name} {n}' for name, n in sorted(calls.items()))})"
    )


async def worker_to_follower(url: str, sessions: int, events: int, *, hub: bool) -> None:
    writer, reader = RedisSessionStore(url), RedisSessionStore(url)
    await writer.open()
    await reader.open()
    delays: list[float] = []
    cpu_before = await redis_cpu(writer)
    try:
        ids = [f"flow-{sessions}-{hub}-{n}" for n in range(sessions)]
        for session_id in ids:
            await writer.create(record(session_id))

        tails = TailHub(reader)
        await tails.__aenter__()

        async def follow(session_id: str) -> None:
            last = 0
            subscription = await tails.subscribe(session_id, 0) if hub else None
            while last < events:
                if subscription is not None:
                    batch = await subscription.next(timeout=10)
                else:
                    batch = await reader.tail(session_id, last, timeout=10)
                for got in batch:
                    delays.append(time.perf_counter() - json.loads(got.data)["sent"])
                    last = got.seq
            if subscription is not None:
                subscription.close()

        async def write(session_id: str) -> None:
            for seq in range(1, events + 1):
                await writer.append(session_id, [event(seq, time.perf_counter())])

        followers = [asyncio.create_task(follow(session_id)) for session_id in ids]
        started = time.perf_counter()
        await asyncio.gather(*(write(session_id) for session_id in ids))
        await asyncio.gather(*followers)
        wall = time.perf_counter() - started
        cpu = await redis_cpu(writer) - cpu_before
        await tails.__aexit__(None, None, None)
    finally:
        await writer.close()
        await reader.close()
    total = sessions * events
    cuts = statistics.quantiles(delays, n=100)
    print(
        f"  {sessions:>4} sessions x {events} events, "
        f"{'one TailHub' if hub else 'a tail per follower'}: {total / wall:,.0f} events/s "
        f"({wall:.1f} s); append -> follower p50 {cuts[49] * 1000:.1f} ms, "
        f"p99 {cuts[98] * 1000:.1f} ms; redis-server CPU {cpu / total * 1e6:.0f} µs per event "
        "(append + delivery; one Python process writes and reads, and is the bottleneck)"
    )


async def memory(store: RedisSessionStore, url: str) -> None:
    base = await used_memory(store)
    for n in range(1000):
        session_id = f"mem-{n}"
        await store.create(record(session_id))
        await store.append(session_id, [event(seq) for seq in range(1, 14)])
    finished = await used_memory(store)
    per_session = (finished - base) / 1000
    for n in range(1000):
        await store.append(f"mem-{n}", [event(seq) for seq in range(14, 114)])
    longer = await used_memory(store)
    per_entry = (longer - finished) / (1000 * 100)
    print(f"  per session (record, indexes, 13 events): {per_session / 1024:.1f} KiB")
    print(f"  per further event of {len(event(1).data)} bytes: {per_entry:.0f} bytes")
    # Followers blocked in XREAD: one connection each on the server.
    followers = RedisSessionStore(url)
    await followers.open()
    before = await used_memory(store)
    waiting = [
        asyncio.create_task(followers.tail(f"mem-{n}", 10_000, timeout=30)) for n in range(500)
    ]
    while True:  # until all 500 are blocked on the server
        if (await store.client.info("clients"))["blocked_clients"] >= 500:
            break
        await asyncio.sleep(0.05)
    during = await used_memory(store)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await followers.close()
    print(
        f"  per follower blocked in XREAD (server side): {(during - before) / 500 / 1024:.1f} KiB"
    )


async def main(sessions: int, events: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        server.start()
        store = RedisSessionStore(server.url)
        await store.open()
        try:
            version = (await store.client.info("server"))["redis_version"]
            print(f"redis-server {version}, no persistence, loopback; {time.strftime('%F %T')}")
            print("1. Redis commands per appended event (fenced by a lease):")
            await commands_per_event(store, batch=1, events=1000)
            await commands_per_event(store, batch=10, events=1000)
            print("2. Worker -> follower through Redis (append, then XREAD BLOCK):")
            await worker_to_follower(server.url, 1, events * 10, hub=False)
            await worker_to_follower(server.url, sessions, events, hub=False)
            await worker_to_follower(server.url, sessions, events, hub=True)
            print("3. Memory:")
            await memory(store, server.url)
        finally:
            await store.close()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200, help="concurrent sessions in 2")
    parser.add_argument("--events", type=int, default=100, help="events per session in 2")
    options = parser.parse_args()
    asyncio.run(main(options.sessions, options.events))
