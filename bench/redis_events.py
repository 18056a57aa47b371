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
   stream entry, and per follower blocked in ``XREAD`` (server side);
4. the runner's coalescing, before (``coalesce=0``: one append per row) and after
   (the default window): S real ``SessionRun``s at once, each a scripted model
   streaming text every 50 ms (rounds of text, a tool call between them), fenced
   by a lease, each followed through one ``TailHub`` and rebuilt by ``WireView``
   as a client would get it: appends and redis-server CPU per event, and the
   delay from the model's piece to the follower (the first text of a round, any
   text row, the events sent on the wire); then the same on the single process's
   SQLite store (appends and process CPU per event, the wire's delay).

Run: ``.venv/bin/python bench/redis_events.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepresearch.config import AgentTemplate  # noqa: E402
from deepresearch.events import (  # noqa: E402
    Completed,
    Event,
    RoundStart,
    Thinking,
    ToolCallStart,
    ToolResult,
)
from deepresearch.runtime.deltas import ACCUMULATED, WireView, since_of  # noqa: E402
from deepresearch.runtime.follower import Follower  # noqa: E402
from deepresearch.runtime.runner import COALESCE_WINDOW, SessionRun  # noqa: E402
from deepresearch.sessions import SessionRecord, SqliteSessionStore, StoredEvent  # noqa: E402
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


async def command_usec(store: RedisSessionStore) -> dict[str, int]:
    """Microseconds each command has spent executing (a script's include its commands)."""
    stats: dict[str, Any] = await store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["usec"]) for name, value in stats.items()}


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


PIECE_EVERY = 0.05  # the agent's STREAM_INTERVAL: a text row at most this often
PIECES = 40  # per round: 2 s of text (both settable: ``--pieces``, ``--piece-ms``)
ROUNDS = 3
TOOL_SECONDS = 0.3


class Streamer:
    """A scripted agent: ROUNDS rounds of PIECES text pieces, a tool call after each."""

    def __init__(self, session_id: str, pieces: int, every: float) -> None:
        self.sid = session_id
        self.pieces, self.every = pieces, every

    async def run(self, question: str) -> AsyncIterator[Event]:
        sid = self.sid
        for round_ in range(1, ROUNDS + 1):
            yield RoundStart(session_id=sid, round=round_)
            text = ""
            for n in range(self.pieces):
                text += f"piece {n} of the reasoning, "
                yield Thinking(session_id=sid, round=round_, content=text, delta="")
                await asyncio.sleep(self.every)
            args = {"query": f"round {round_}"}
            yield ToolCallStart(session_id=sid, round=round_, tool_name="search", tool_args=args)
            await asyncio.sleep(TOOL_SECONDS)
            yield ToolResult(session_id=sid, round=round_, tool_name="search", result="found")
        yield Completed(session_id=sid, content="research complete")


def ms(values: list[float], q: int) -> str:
    return f"{statistics.quantiles(values, n=100)[q - 1] * 1000:.0f}"


async def coalescing(url: str, sessions: int, window: float, pieces: int, every: float) -> None:
    store, reader = RedisSessionStore(url), RedisSessionStore(url)
    await store.open()
    await reader.open()
    leases = store.leases()
    first: list[float] = []  # a round's first text row: model -> follower
    rows: list[float] = []  # every text row
    wire: list[float] = []  # every text event a client is sent (WireView)
    runs: list[SessionRun] = []
    try:
        ids = [f"coalesce-{window}-{n}" for n in range(sessions)]
        for session_id in ids:
            await store.create(record(session_id))
            await leases.acquire(session_id, "worker", ttl=120)
        tails = TailHub(reader)
        await tails.__aenter__()

        async def follow(session_id: str) -> None:
            view = WireView(session_id)
            with await tails.subscribe(session_id, 0) as subscription:
                while True:
                    batch = await subscription.next(timeout=30)
                    now = time.time()
                    for got in batch:
                        if got.type in ACCUMULATED:
                            made = datetime.fromisoformat(json.loads(got.data)["timestamp"])
                            rows.append(now - made.timestamp())
                            if since_of(got) == got.seq:
                                first.append(now - made.timestamp())
                        for sent in view.feed(got):
                            if sent.type in ACCUMULATED:
                                made = datetime.fromisoformat(json.loads(sent.data)["timestamp"])
                                wire.append(now - made.timestamp())
                        if got.type == "completed":
                            return

        followers = [asyncio.create_task(follow(session_id)) for session_id in ids]
        for session_id in ids:
            runs.append(
                SessionRun(
                    record(session_id),
                    store=store,
                    agent_factory=lambda sid, config, **_: Streamer(sid, pieces, every),
                    config=AgentTemplate(),
                    lease="worker",
                    coalesce=window,
                )
            )
        before = await commandstats(store)
        usec_before = await command_usec(store)
        cpu_before = await redis_cpu(store)
        started = time.perf_counter()
        await asyncio.gather(*(run.run() for run in runs))
        await asyncio.gather(*followers)
        wall = time.perf_counter() - started
        cpu = await redis_cpu(store) - cpu_before
        after = await commandstats(store)
        usec = await command_usec(store)
        await tails.__aexit__(None, None, None)
    finally:
        await store.close()
        await reader.close()
    events = sum(run.seq for run in runs)
    appending = (usec.get("evalsha", 0) - usec_before.get("evalsha", 0)) / events
    delivering = (usec.get("xread", 0) - usec_before.get("xread", 0)) / events
    appends = sum(run.appends for run in runs)
    calls = after.get("evalsha", 0) - before.get("evalsha", 0)
    label = "before (one append per row)" if window == 0 else f"after (window {window:g} s)"
    print(
        f"  {label}: {sessions} sessions, {events:,} events in {wall:.1f} s; "
        f"{appends / events:.2f} appends per event ({calls:,} scripts run); "
        f"redis-server CPU {cpu / events * 1e6:.1f} µs per event (append + delivery to a TailHub; "
        f"executing: appends {appending:.1f}, XREAD {delivering:.1f})"
    )
    print(
        f"    model -> follower, ms p50/p99: first text of a round {ms(first, 50)}/"
        f"{ms(first, 99)}; any text row {ms(rows, 50)}/{ms(rows, 99)}; "
        f"text events sent to the client {ms(wire, 50)}/{ms(wire, 99)}"
    )


async def coalescing_sqlite(sessions: int, window: float, pieces: int, every: float) -> None:
    """The same sessions on the single process's SQLite store, each followed as
    ``deepresearch serve`` follows it (``Follower`` on the store's ``tail``)."""
    wire: list[float] = []
    runs: list[SessionRun] = []
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteSessionStore(Path(folder) / "sessions.sqlite")
        await store.open()
        try:
            ids = [f"sqlite-{window}-{n}" for n in range(sessions)]
            for session_id in ids:
                await store.create(record(session_id))

            async def follow(session_id: str) -> None:
                async for sent in Follower(store).follow(session_id):
                    if sent is not None and sent.type in ACCUMULATED:
                        made = datetime.fromisoformat(json.loads(sent.data)["timestamp"])
                        wire.append(time.time() - made.timestamp())

            for session_id in ids:
                runs.append(
                    SessionRun(
                        record(session_id),
                        store=store,
                        agent_factory=lambda sid, config, **_: Streamer(sid, pieces, every),
                        config=AgentTemplate(),
                        coalesce=window,
                    )
                )
            followers = [asyncio.create_task(follow(session_id)) for session_id in ids]
            cpu_before, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(run.run() for run in runs))
            await asyncio.gather(*followers)
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - started
        finally:
            await store.close()
    events = sum(run.seq for run in runs)
    appends = sum(run.appends for run in runs)
    label = "before (one append per row)" if window == 0 else f"after (window {window:g} s)"
    print(
        f"  SQLite, {label}: {events:,} events in {wall:.1f} s; {appends / events:.2f} appends "
        f"per event; process CPU {cpu / events * 1e6:.0f} µs per event (runs, store, "
        f"followers); text events sent to the client ms p50/p99 {ms(wire, 50)}/{ms(wire, 99)}"
    )


async def coalescing_section(
    url: str, sessions: int, windows: list[float], pieces: int, every: float
) -> None:
    print(
        f"4. The runner's coalescing ({sessions} sessions, {ROUNDS} rounds of "
        f"{pieces} text pieces every {every * 1000:.0f} ms, a tool call after each):"
    )
    for window in windows:
        await coalescing(url, sessions, window, pieces, every)
    for window in windows:
        await coalescing_sqlite(sessions, window, pieces, every)


async def main(
    sessions: int,
    events: int,
    coalesced: int,
    windows: list[float],
    only_coalescing: bool,
    pieces: int = PIECES,
    every: float = PIECE_EVERY,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        server.start()
        store = RedisSessionStore(server.url)
        await store.open()
        try:
            version = (await store.client.info("server"))["redis_version"]
            print(f"redis-server {version}, no persistence, loopback; {time.strftime('%F %T')}")
            if only_coalescing:
                return await coalescing_section(server.url, coalesced, windows, pieces, every)
            print("1. Redis commands per appended event (fenced by a lease):")
            await commands_per_event(store, batch=1, events=1000)
            await commands_per_event(store, batch=10, events=1000)
            print("2. Worker -> follower through Redis (append, then XREAD BLOCK):")
            await worker_to_follower(server.url, 1, events * 10, hub=False)
            await worker_to_follower(server.url, sessions, events, hub=False)
            await worker_to_follower(server.url, sessions, events, hub=True)
            print("3. Memory:")
            await memory(store, server.url)
            await coalescing_section(server.url, coalesced, windows, pieces, every)
        finally:
            await store.close()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200, help="concurrent sessions in 2")
    parser.add_argument("--events", type=int, default=100, help="events per session in 2")
    parser.add_argument("--coalesced", type=int, default=50, help="concurrent sessions in 4")
    parser.add_argument(
        "--windows",
        default=f"0,{COALESCE_WINDOW:g}",
        help="coalescing windows in 4, comma-separated (0: one append per row, as before)",
    )
    parser.add_argument("--only-coalescing", action="store_true", help="run 4 alone")
    parser.add_argument("--pieces", type=int, default=PIECES, help="text pieces per round in 4")
    parser.add_argument(
        "--piece-ms", type=float, default=PIECE_EVERY * 1000, help="ms between pieces in 4"
    )
    options = parser.parse_args()
    windows = [float(w) for w in options.windows.split(",")]
    asyncio.run(
        main(
            options.sessions,
            options.events,
            options.coalesced,
            windows,
            options.only_coalescing,
            options.pieces,
            options.piece_ms / 1000,
        )
    )
