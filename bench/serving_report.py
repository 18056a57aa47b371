"""Tables and plots of the serving benchmark's results (``serving.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class ResultLike(Protocol):
    shape: str
    contender: str
    available: bool
    sessions: int
    completed: int
    lost: int
    sessions_per_hour: float | None
    ttft_p50: float | None
    session_p50: float | None
    session_p95: float | None
    queue_p95: float | None
    backend_ttft_mean: float | None
    kv_usage_mean: float | None
    preemptions: int | None
    prefix_hit_rate: float | None
    lag_max: float | None
    wall_seconds: float
    backends: list[dict[str, Any]]
    note: str


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def line(r: ResultLike) -> str:
    """One progress line while the run goes on."""
    return (
        f"  {r.contender:<16} {r.completed}/{r.sessions} done  "
        f"{_num(r.sessions_per_hour)} sessions/h  ttft p50 {_num(r.ttft_p50, 1)} s  "
        f"session p95 {_num(r.session_p95)} s  queue p95 {_num(r.queue_p95)} s  "
        f"kv {_pct(r.kv_usage_mean)}  pre-emptions {r.preemptions}  "
        f"prefix hits {_pct(r.prefix_hit_rate)}  lag {_num(r.lag_max, 1)} s  "
        f"backend busy {_pct(getattr(r, 'backend_busy', None))}  "
        f"({r.wall_seconds:.0f} s wall){_peaks(r)}{'  ' + r.note if r.note else ''}"
    )


def _peaks(r: ResultLike) -> str:
    """deepresearch's peaks from /health, and the host's load, where measured."""
    slots = getattr(r, "slots_max", None)
    if slots is None:
        return ""
    return (
        f"  peak slots {slots}, running {getattr(r, 'active_max', None)}, "
        f"call limit {getattr(r, 'call_limit_max', None)}; load {getattr(r, 'load_average', 0):.1f}"
    )


HEADER = (
    "| shape | contender | done | sessions/h | TTFT p50 s | session p50 s | session p95 s "
    "| queue p95 s | backend TTFT s | KV use | pre-emptions | prefix hits |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def row(r: ResultLike) -> str:
    if not r.available:
        return f"| {r.shape} | {r.contender} | not available | | | | | | | | | |\n"
    return (
        f"| {r.shape} | {r.contender} | {r.completed}/{r.sessions} | "
        f"{_num(r.sessions_per_hour)} | {_num(r.ttft_p50, 1)} | {_num(r.session_p50)} | "
        f"{_num(r.session_p95)} | {_num(r.queue_p95)} | {_num(r.backend_ttft_mean, 1)} | "
        f"{_pct(r.kv_usage_mean)} | "
        f"{r.preemptions} | {_pct(r.prefix_hit_rate)} |\n"
    )


def _by(results: list[Any], shape: str, name: str) -> Any | None:
    return next(
        (r for r in results if r.shape == shape and r.contender == name and r.available), None
    )


def targets(results: list[Any]) -> str:
    """The issue's targets, for auto where it ran and for the best fixed cap meanwhile."""
    out = []
    shapes = [
        s for s in ("short", "medium", "long", "headroom") if any(r.shape == s for r in results)
    ]
    for shape in shapes:
        fixed = [r for r in results if r.shape == shape and r.contender.startswith("fixed ")]
        best = max(fixed, key=lambda r: r.sessions_per_hour or 0.0, default=None)
        seed, nocap, auto = (_by(results, shape, n) for n in ("seed", "no cap", "auto"))
        if best is None:
            continue
        for label, cand in (("best fixed (" + best.contender + ")", best), ("auto", auto)):
            if cand is None:
                out.append(f"- {shape}: {label}: not available")
                continue
            checks = []
            if cand is not best:
                ratio = (cand.sessions_per_hour or 0) / (best.sessions_per_hour or 1)
                checks.append(f"{ratio:.2f}x the best fixed cap (target >= 0.90)")
            if nocap is not None:
                ok = (cand.sessions_per_hour or 0) >= (nocap.sessions_per_hour or 0)
                checks.append(f"{'>=' if ok else '<'} no cap")
            if seed is not None and seed.sessions_per_hour:
                ratio = (cand.sessions_per_hour or 0) / seed.sessions_per_hour
                checks.append(f"{ratio:.1f}x the seed (target >= 5x)")
            if seed is not None and seed.queue_p95 is not None and cand.queue_p95 is not None:
                ok = cand.queue_p95 < seed.queue_p95
                checks.append(
                    f"queue p95 {cand.queue_p95:,.0f} s {'<' if ok else '>='} the seed's "
                    f"{seed.queue_p95:,.0f} s"
                )
            out.append(f"- {shape}: {label}: " + "; ".join(checks))
    for r in results:
        if r.shape == "2 backends" and r.available:
            served = [b["generation_tokens"] for b in r.backends]
            share = ", ".join(f"{100 * t / (sum(served) or 1):.0f}%" for t in served)
            out.append(
                f"- two backends (speed 1.0 and 0.5), {r.contender}: tokens generated by the "
                f"fast and the slow one: {share}; lost sessions: {r.lost}"
            )
        if r.shape == "no /metrics" and r.available:
            fixed = [f for f in results if f.shape == "medium" and f.contender.startswith("fixed ")]
            best = max(fixed, key=lambda f: f.sessions_per_hour or 0.0, default=None)
            if best is not None and best.sessions_per_hour:
                ratio = (r.sessions_per_hour or 0) / best.sessions_per_hour
                out.append(
                    f"- a backend without /metrics (medium), {r.contender}: {ratio:.2f}x the "
                    f"best fixed cap with metrics ({best.contender})"
                )
        if r.shape.startswith("seed x") and r.available:
            stuck = "a deadlock: " if r.completed == 0 else ""
            out.append(
                f"- the seed with {r.sessions} clients on the headroom backend: {stuck}"
                f"{r.completed} of {r.sessions} completed within {r.wall_seconds:.0f} s of wall"
                " time"
            )
        if r.shape == "kill" and r.available:
            out.append(
                f"- the slow backend killed a third of the way in, {r.contender}: "
                f"{r.lost} of {r.sessions} sessions lost"
            )
    return "\n".join(out) + "\n"


def markdown(results: list[Any], meta: dict[str, Any]) -> str:
    head = (
        f"Serving benchmark, {meta['date']}, time scale {meta['time_scale']:g}x"
        f"{' (quick)' if meta['quick'] else ''}, {meta['wall_seconds']:.0f} s wall.\n"
        "Times are simulated seconds; KV use is the time-weighted mean while the backend was "
        "busy.\n\n"
    )
    table = HEADER + "".join(row(r) for r in results)
    lag = max((r.lag_max or 0.0) for r in results) if results else 0.0
    tail = f"\nLargest simulator lag behind the scaled clock: {lag:.1f} simulated s.\n"
    return head + table + "\nTargets:\n\n" + targets(results) + tail


def plot(results: list[Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [
        s for s in ("short", "medium", "long", "headroom") if any(r.shape == s for r in results)
    ]
    metrics = [
        ("sessions_per_hour", "sessions / hour"),
        ("session_p95", "p95 session time (s)"),
        ("queue_p95", "p95 queue wait (s)"),
        ("prefix_hit_rate", "prefix-cache hit rate"),
    ]
    fig, axes = plt.subplots(
        len(metrics), max(1, len(shapes)), figsize=(5 * max(1, len(shapes)), 3.2 * len(metrics)),
        squeeze=False,
    )  # fmt: skip
    for col, shape in enumerate(shapes):
        rows = [r for r in results if r.shape == shape and r.available]
        names = [r.contender for r in rows]
        for line_no, (attr, label) in enumerate(metrics):
            ax = axes[line_no][col]
            values = [getattr(r, attr) or 0.0 for r in rows]
            colors = [
                "#888888" if n == "seed" else "#d9822b" if n.startswith("langgraph")
                else "#2b6cb0" for n in names
            ]  # fmt: skip
            ax.bar(range(len(rows)), values, color=colors)
            ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel(label, fontsize=9)
            if line_no == 0:
                ax.set_title(f"{shape} contexts")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
