"""A steady-load soak: hundreds of sessions over minutes, random disconnects and cancels,
one of two backends flapping; then the server must drain to nothing and have lost nothing.

Usage: python bench/soak.py [--minutes 10] [--clients 12] [--slots 6] [--flap-seconds 20]
       [--json PATH]

It starts two LLM simulators and one ``deepresearch serve`` (both backends configured,
a temporary data dir, the three-record bench corpus). Backend B is killed and restarted
on the same port every ``--flap-seconds`` (down for a third of that). ``--clients``
loops each start a session (``POST /chat/stream``, a few rounds at a few ms a piece) and
then, at random: read it to the end (60 %), disconnect after the first event and come
back with ``Last-Event-ID`` (15 %, ``on_disconnect=continue``), disconnect for good (10 %,
the ``grace`` policy then cancels it), or disconnect, ``DELETE`` it and follow it to its
end (15 %); each waits 0.5-2 s between sessions. Every 10 s it samples
the server's RSS and open file descriptors. At the end it stops the load, waits for
the drain and checks: slots busy and queue length 0, every started session in the
store and finished (none ``queued``/``processing``), every stream read to its end
with exactly one terminal event, last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streams import (  # a sibling script, not a package
    SIMULATOR,
    BenchError,
    Proc,
    free_port,
    rss_bytes,
    server,
    simulator,
    write_corpus,
)

TERMINAL = frozenset({"completed", "error", "timeout", "no_answer", "cancelled"})


@dataclass
class Tally:
    started: set[str] = field(default_factory=set)
    outcomes: dict[str, int] = field(default_factory=dict)
    bad_streams: list[str] = field(default_factory=list)
    refused: int = 0  # 503/429 at admission
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, rss, fds)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_stream(response: httpx.Response) -> list[dict[str, Any]]:
    """Events until the terminal one (or the end of the stream)."""
    events: list[dict[str, Any]] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
            if events[-1]["type"] in TERMINAL:
                break
    return events


def judge(tally: Tally, sid: str, types: list[str]) -> None:
    terminals = [t for t in types if t in TERMINAL]
    if len(terminals) != 1 or types[-1] != terminals[0]:
        tally.bad_streams.append(f"{sid[:8]}: {types[-3:]}")
        return
    tally.outcomes[types[-1]] = tally.outcomes.get(types[-1], 0) + 1


async def one_session(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    roll = rng.random()
    policy = "grace" if 0.75 <= roll < 0.85 else "continue"
    body = {
        "question": f"tok-soak{rng.randrange(10**6)} [sim:slow=10] [sim:rounds=3]",
        "on_disconnect": policy,
    }
    seen: list[str] = []
    async with client.stream("POST", "/chat/stream", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            tally.refused += 1
            await asyncio.sleep(1)
            return
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                first = json.loads(line[6:])
                break
        else:
            tally.bad_streams.append("a stream without events")
            return
        sid = str(first["session_id"])
        tally.started.add(sid)
        seen.append(first["type"])
        if roll < 0.60:  # read to the end on this connection
            async for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["type"])
                    if seen[-1] in TERMINAL:
                        break
            judge(tally, sid, seen)
            return
    # Disconnected after the first event.
    if 0.75 <= roll < 0.85:
        return  # gone for good: the grace policy cancels it
    await asyncio.sleep(rng.uniform(0, 0.5))
    if roll < 0.75:
        await client.delete(f"/sessions/{sid}")
    # Resume from where this client was (the first event) to the end.
    headers = {"Last-Event-ID": "1"}
    async with client.stream("GET", f"/sessions/{sid}/events", headers=headers) as response:
        rest = [event["type"] for event in await read_stream(response)]
    judge(tally, sid, seen + rest)


async def client_loop(url: str, tally: Tally, seed: int, until: float) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # a person reading the last answer
            try:
                await one_session(client, tally, rng)
            except httpx.HTTPError as exc:
                tally.bad_streams.append(f"transport: {type(exc).__name__}")


async def flap(port: int, workdir: Path, period: float, until: float) -> int:
    """Backend B: up for two thirds of ``period``, then down for a third, again and again."""
    flaps = 0
    while time.monotonic() < until:
        with (workdir / "flapping.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SIMULATOR), "--port", str(port), "--token-delay-ms", "0",
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        await asyncio.sleep(period * 2 / 3)
        proc.kill()
        await proc.wait()
        flaps += 1
        await asyncio.sleep(period / 3)
    return flaps


async def sample(pid: int, tally: Tally, started: float, until: float) -> None:
    while time.monotonic() < until:
        tally.samples.append((time.monotonic() - started, rss_bytes(pid), open_fds(pid)))
        await asyncio.sleep(10)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    write_corpus(workdir / "corpus")
    port_b = free_port()
    tally = Tally()
    with simulator(workdir) as steady:
        url_b = f"http://127.0.0.1:{port_b}/v1"
        options = argparse.Namespace(slots=args.slots, queue=200, timeout=900)
        os.environ["DEEPRESEARCH_DISCONNECT_GRACE"] = "5"
        os.environ["DEEPRESEARCH_LLM_RETRIES"] = "2"
        with server(workdir, "soak", f"{steady.url},{url_b}", options) as proc:
            started = time.monotonic()
            until = started + args.minutes * 60
            flapper = asyncio.create_task(flap(port_b, workdir, args.flap_seconds, until))
            sampler = asyncio.create_task(sample(proc.pid, tally, started, until))
            await asyncio.gather(
                *(client_loop(proc.url, tally, seed, until) for seed in range(args.clients))
            )
            flaps = await flapper
            await sampler
            drained = await drain(proc, tally)
            tally.samples.append(
                (time.monotonic() - started, rss_bytes(proc.pid), open_fds(proc.pid))
            )
            lost, unfinished = await check_store(proc.url, tally)
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "slots": args.slots,
        "sessions": len(tally.started),
        "outcomes": tally.outcomes,
        "refused": tally.refused,
        "bad_streams": tally.bad_streams[:20],
        "bad_stream_count": len(tally.bad_streams),
        "flaps": flaps,
        "drained": drained,
        "lost": lost,
        "unfinished": unfinished,
        "samples": tally.samples,
    }


async def drain(proc: Proc, tally: Tally) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as client:
        deadline = time.monotonic() + 120
        while True:
            state = (await client.get("/health")).json()
            if (state["active_sessions"], state["queued_sessions"]) == (0, 0):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return {"active": state["active_sessions"], "queued": state["queued_sessions"]}


async def check_store(url: str, tally: Tally) -> tuple[int, int]:
    lost = unfinished = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for sid in tally.started:
            response = await client.get(f"/sessions/{sid}")
            if response.status_code != 200:
                lost += 1
            elif response.json()["status"] in {"queued", "processing"}:
                unfinished += 1
    return lost, unfinished


def render(result: dict[str, Any]) -> str:
    rows = [
        f"soak: {result['minutes']} min, {result['clients']} clients, {result['slots']} slots, "
        f"backend B flapped {result['flaps']} times",
        f"sessions started: {result['sessions']}; outcomes: {result['outcomes']}; "
        f"refused at admission: {result['refused']}",
        f"streams without exactly one terminal event, last: {result['bad_stream_count']}",
        f"after drain: slots busy {result['drained']['active']}, "
        f"queue {result['drained']['queued']}",
        f"sessions lost: {result['lost']}; left queued/processing: {result['unfinished']}",
        "",
        "| t (s) | server RSS (MB) | open fds |",
        "|---:|---:|---:|",
    ]
    for seconds, rss, fds in result["samples"]:
        rows.append(f"| {seconds:.0f} | {rss / 2**20:.1f} | {fds} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--flap-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deepresearch-soak-") as folder:
        try:
            result = asyncio.run(run(args, Path(folder)))
        except BenchError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = (
        result["lost"] == 0
        and result["unfinished"] == 0
        and result["drained"] == {"active": 0, "queued": 0}
        and result["bad_stream_count"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
