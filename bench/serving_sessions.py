"""The serving benchmark's load client and measures: sessions over SSE, percentiles, results."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from serving_procs import Proc

TERMINAL = frozenset({"completed", "error", "timeout", "no_answer", "cancelled"})


@dataclass
class Session:
    question: str
    posted: float = 0.0
    started: float | None = None  # admitted: the slot is held (or the run began)
    first_token: float | None = None
    ended: float | None = None
    outcome: str = "lost"
    detail: str = ""


def sse_events(lines: list[str]) -> tuple[str, str]:
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return kind, "\n".join(data)


async def run_session(client: httpx.AsyncClient, kind: str, base: str, session: Session) -> None:
    session.posted = time.monotonic()
    url = f"{base}/chat/stream"
    body: dict[str, Any] = {"question": session.question}
    try:
        if kind == "langgraph":
            # A thread per session, as a deployment that keeps conversations does: its state is
            # checkpointed after every step, as deepresearch stores every session's events.
            thread = await client.post(f"{base}/threads", json={})
            thread.raise_for_status()
            url = f"{base}/threads/{thread.json()['thread_id']}/runs/stream"
            body = {
                "assistant_id": "agent",
                "input": {"question": session.question},
                "stream_mode": ["custom"],
                "config": {"recursion_limit": 200},
            }
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                session.outcome = f"http {response.status_code}"
                return
            block: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    block.append(line)
                    continue
                if not block:
                    continue
                event, data = sse_events(block)
                block = []
                if on_event(kind, session, event, data):
                    return
    except httpx.HTTPError as exc:
        session.detail = f"{type(exc).__name__}: {exc}"
    finally:
        session.ended = time.monotonic()


def on_event(kind: str, session: Session, event: str, data: str) -> bool:
    """Note the session's milestones; True at its terminal event."""
    now = time.monotonic()
    if kind == "langgraph":
        if event == "metadata" and session.started is None:
            session.started = now
        elif event == "error":
            session.outcome, session.detail = "error", data[:200]
            return True
        elif event == "custom":
            payload = json.loads(data)
            if payload.get("type") == "thinking" and session.first_token is None:
                session.first_token = now
            if payload.get("type") == "final_answer":
                session.outcome = "completed"
        return False
    if not data:
        return False
    payload = json.loads(data)
    kind_of = payload.get("type")
    if kind_of in ("init", "round_start") and session.started is None:
        session.started = now
    elif kind_of == "thinking" and session.first_token is None:
        session.first_token = now
    elif kind_of in TERMINAL:
        session.outcome = kind_of
        if kind_of != "completed":
            session.detail = str(payload.get("content", ""))[:200]
        return True
    return False


async def run_burst(
    kind: str, base: str, questions: list[str], timeout: float, on_progress: Any = None
) -> list[Session]:
    sessions = [Session(q) for q in questions]
    limits = httpx.Limits(max_connections=len(questions) + 10, max_keepalive_connections=0)
    timeouts = httpx.Timeout(timeout, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeouts) as client:
        tasks = [asyncio.create_task(run_session(client, kind, base, s)) for s in sessions]
        watcher = asyncio.create_task(on_progress(sessions)) if on_progress else None
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    return sessions


# --------------------------------------------------------------------------- measures


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


@dataclass
class Result:
    shape: str
    contender: str
    available: bool = True
    sessions: int = 0
    completed: int = 0
    lost: int = 0
    makespan: float | None = None  # simulated seconds from the burst to the last end
    sessions_per_hour: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    session_p50: float | None = None
    session_p95: float | None = None
    queue_p50: float | None = None
    queue_p95: float | None = None
    kv_usage_mean: float | None = None
    kv_usage_max: float | None = None
    preemptions: int | None = None
    prefix_hit_rate: float | None = None
    backend_ttft_mean: float | None = None
    lag_max: float | None = None
    wall_seconds: float = 0.0
    backends: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    # deepresearch only, from its /health polled during the burst: the most session slots
    # (``max_concurrent``), sessions running at once, and the largest backend call limit.
    slots_max: int | None = None
    active_max: int | None = None
    call_limit_max: int | None = None
    load_average: float | None = None  # the host's one-minute load at the end of the burst
    backend_busy: float | None = None  # the share of the burst the backends' engines stepped


def measure(
    shape: str, name: str, sessions: list[Session], began: float, scale: float,
    stats: list[dict[str, Any]], wall: float,
) -> Result:  # fmt: skip
    def sim(t: float | None, since: float) -> float | None:
        return None if t is None else (t - since) * scale

    done = [s for s in sessions if s.outcome == "completed"]
    ends = [s.ended for s in sessions if s.ended is not None]
    makespan = sim(max(ends), began) if ends else None
    result = Result(shape, name, sessions=len(sessions), completed=len(done))
    result.lost = len(sessions) - len(done)
    result.makespan = makespan
    if makespan:
        result.sessions_per_hour = len(done) / makespan * 3600
    ttft = [v for s in done if (v := sim(s.first_token, s.posted)) is not None]
    total = [v for s in done if (v := sim(s.ended, s.posted)) is not None]
    queue = [v for s in done if (v := sim(s.started, s.posted)) is not None]
    result.ttft_p50, result.ttft_p95 = percentile(ttft, 50), percentile(ttft, 95)
    result.session_p50, result.session_p95 = percentile(total, 50), percentile(total, 95)
    result.queue_p50, result.queue_p95 = percentile(queue, 50), percentile(queue, 95)
    busy = sum(s["busy_seconds"] for s in stats) or 1e-9
    result.kv_usage_mean = sum(s["kv_usage_mean"] * s["busy_seconds"] for s in stats) / busy
    result.kv_usage_max = max(s["kv_usage_max"] for s in stats)
    result.preemptions = sum(s["preemptions"] for s in stats)
    queries = sum(s["prefix_queries"] for s in stats)
    result.prefix_hit_rate = sum(s["prefix_hits"] for s in stats) / queries if queries else None
    counts = sum(s["ttft_count"] for s in stats)
    if counts:
        result.backend_ttft_mean = (
            sum((s["ttft_mean"] or 0) * s["ttft_count"] for s in stats) / counts
        )
    result.lag_max = max(s["lag_max"] for s in stats)
    if makespan:
        result.backend_busy = sum(s["busy_seconds"] for s in stats) / (makespan * len(stats))
    result.wall_seconds = wall
    result.backends = [
        {"finished": s["finished"], "generation_tokens": s["generation_tokens"],
         "prompt_tokens": s["prompt_tokens"]}
        for s in stats
    ]  # fmt: skip
    failures = sorted(
        {f"{s.outcome} {s.detail}".strip() for s in sessions if s.outcome != "completed"}
    )
    result.note = "; ".join(failures)[:300]
    return result


async def sim_call(sims: list[Proc], path: str, post: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=10) as client:
        for sim in sims:
            if not sim.alive():
                out.append(dict(DEAD_STATS))
                continue
            response = await (client.post if post else client.get)(f"{sim.url}{path}")
            out.append(response.json())
    return out


DEAD_STATS: dict[str, Any] = {
    "busy_seconds": 0.0, "kv_usage_mean": 0.0, "kv_usage_max": 0.0, "preemptions": 0,
    "prefix_queries": 0, "prefix_hits": 0, "ttft_count": 0, "ttft_mean": None, "lag_max": 0.0,
    "finished": 0, "generation_tokens": 0, "prompt_tokens": 0,
}  # fmt: skip
