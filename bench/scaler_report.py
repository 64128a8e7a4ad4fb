"""The scaler benchmark's arithmetic: per-phase latency and queue wait, recovery, process-seconds, actions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from loadtest import records

WAIT_TARGET_S = 0.1
RECOVERY_WINDOW_S = 5.0  # p95 queue wait over sliding windows this long
# The part of a phase that is "steady": what follows the reaction to the change that opened it
# (step: the scale-up; after: the 30 s scale-down window, then one step down per ~5 s).
SETTLE_S = {"warmup": None, "before": 0.0, "step": 15.0, "after": 50.0}


class Phase(NamedTuple):
    name: str
    seconds: int
    rate: float


def _pcts(values: list[float]) -> dict[str, float | None]:
    p50, p95, p99 = records.percentiles(values)
    return {"n": len(values), "p50": p50, "p95": p95, "p99": p99}


def _bounds(phases: tuple[Phase, ...]) -> dict[str, tuple[float, float]]:
    out, t = {}, 0.0
    for ph in phases:
        out[ph.name] = (t, t + ph.seconds)
        t += ph.seconds
    return out


def _ok(status: Any) -> bool:
    return isinstance(status, float) and 200 <= status < 300


def recovery_s(waits: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Seconds after ``start`` until every later 5 s window's p95 wait is under target; None if never."""
    over = []
    t = start
    while t + RECOVERY_WINDOW_S <= end:
        w = [x for enq, x in waits if t <= enq < t + RECOVERY_WINDOW_S]
        if w and np.percentile(w, 95) > WAIT_TARGET_S:
            over.append(t)
        t += 1.0
    if not over:
        return 0.0
    if over[-1] + RECOVERY_WINDOW_S + 1.0 > end:
        return None
    return over[-1] + RECOVERY_WINDOW_S - start


def process_seconds(procs: list[tuple[float, int]], lo: float, hi: float) -> float:
    """Pool size integrated over [lo, hi]: ``procs`` is (time, processes) in time order, each held until the next."""
    total = 0.0
    for (t0, n), (t1, _) in zip(procs, procs[1:], strict=False):
        a, b = max(t0, lo), min(t1, hi)
        if b > a:
            total += n * (b - a)
    return total


def analyse(
    name: str,
    phases: tuple[Phase, ...],
    load_dir: Path,
    processes: list[tuple[float, int]],
    tasks: list[tuple[float, float, float]],
    decisions: list[dict],
) -> dict:
    summary = json.loads((load_dir / records.SUMMARY_JSON).read_text())
    start = summary["start_epoch"]
    req = records.read_csv(load_dir / records.REQUESTS_CSV)
    sched, lat, status = req.get("scheduled_s", []), req.get("latency_s", []), req.get("status", [])
    waits = [(finish - run - wait - start, wait) for finish, wait, run in tasks]
    procs = [(t - start, n) for t, n in processes]
    changes = [t for (_, a), (t, b) in zip(procs, procs[1:], strict=False) if a != b]
    acts = [d["t"] - start for d in decisions if d.get("direction") in ("up", "down")]
    bounds = _bounds(phases)
    out: dict[str, Any] = {"phases": {}, "timeline": {"processes": procs[:: max(1, len(procs) // 600)]}}
    for ph in phases:
        lo, hi = bounds[ph.name]
        idx = [i for i, s in enumerate(sched) if s is not None and lo <= s < hi]
        ok = [lat[i] for i in idx if _ok(status[i]) and lat[i] is not None]
        settle = SETTLE_S.get(ph.name)
        steady_lo = None if settle is None else lo + settle
        in_phase = [n for t, n in procs if lo <= t < hi]
        out["phases"][ph.name] = {
            "requests": len(idx),
            "errors": len(idx) - len(ok),
            "shed_429": sum(1 for i in idx if status[i] == 429.0),
            "latency_s": _pcts(ok),
            "queue_wait_s": _pcts([w for enq, w in waits if lo <= enq < hi]),
            "steady_queue_wait_s": _pcts([w for enq, w in waits if steady_lo is not None and steady_lo <= enq < hi]),
            "processes_mean": float(np.mean(in_phase)) if in_phase else None,
            "processes_max": max(in_phase) if in_phase else None,
            "pool_changes": sum(1 for t in changes if lo <= t < hi),
            "steady_pool_changes": None if steady_lo is None else sum(1 for t in changes if steady_lo <= t < hi),
            "scaler_actions": sum(1 for t in acts if lo <= t < hi),
        }
    measured = bounds["before"][0], bounds["after"][1]
    out["recovery_s"] = recovery_s(waits, *bounds["step"])
    out["process_seconds"] = process_seconds(procs, *measured)
    out["steady_pool_changes"] = sum(v["steady_pool_changes"] or 0 for v in out["phases"].values())
    out["load"] = {k: summary.get(k) for k in ("sent", "ok", "errors_total", "timeouts", "dropped")}
    out["policy"] = name
    return out


def _ms(block: dict) -> str:
    vals = [block.get(k) for k in ("p50", "p95", "p99")]
    return "/".join("-" if v is None else f"{v * 1000:.0f}" for v in vals)


def table(results: dict) -> str:
    pols = results["policies"]
    static = pols.get("static", {}).get("process_seconds")
    head = ("policy", "phase", "latency p50/95/99 ms", "queue wait p50/95/99 ms", "steady wait p95", "errors",
            "procs mean/max", "pool changes (steady)")  # fmt: skip
    rows = []
    for name, r in pols.items():
        for ph in ("before", "step", "after"):
            v = r["phases"][ph]
            steady = v["steady_queue_wait_s"]["p95"]
            rows.append((
                name, ph, _ms(v["latency_s"]), _ms(v["queue_wait_s"]),
                "-" if steady is None else f"{steady * 1000:.0f} ms", f"{v['errors']} ({v['shed_429']} shed)",
                f"{v['processes_mean'] or 0:.1f}/{v['processes_max'] or 0}",
                f"{v['pool_changes']} ({'-' if v['steady_pool_changes'] is None else v['steady_pool_changes']})",
            ))  # fmt: skip
    lines = _fmt(head, rows)
    head2 = ("policy", "recovery after step", "process-seconds", "of static", "steady-phase pool changes")
    rows2 = []
    for name, r in pols.items():
        rec = r["recovery_s"]
        share = f"{r['process_seconds'] / static:.0%}" if static else "-"
        rows2.append((name, "not within the step" if rec is None else f"{rec:.0f} s", f"{r['process_seconds']:.0f}",
                      share, str(r["steady_pool_changes"])))  # fmt: skip
    return lines + "\n\n" + _fmt(head2, rows2)


def _fmt(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])
