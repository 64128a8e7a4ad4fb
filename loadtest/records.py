"""What a load test records, how it is aggregated, and the CSV/JSON files it is written to.

Every arrival the profile scheduled before the run stopped becomes exactly one
:class:`RequestRecord`. Its ``status`` is an HTTP status code ("200", "429",
...) or one of ``timeout``, ``error`` (connection or protocol failure),
``bad_response`` (2xx with an unexpected body), ``job_failed``, ``cancelled``
(still in flight at a forced stop) or ``dropped`` (over --max-in-flight, never
sent). A 2xx is ok, ``timeout`` and ``dropped`` are their own kinds, anything
else is an error; so ``sent == ok + errors + timeouts``.

``latency_s`` runs from the *scheduled* time to the answer, so a generator
that fell behind its schedule shows in it; ``sent_s - scheduled_s`` is that
send lag on its own (summary ``send_lag_s``).

Per-second rows bucket each request by the second it was *scheduled* in
(offered, sent, dropped, ok, errors, timeouts, latency percentiles of ok
requests, error rate), except ``completed``: ok answers by the second they
*arrived* in, i.e. the achieved throughput.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REQUESTS_CSV = "requests.csv"
SECONDS_CSV = "seconds.csv"
SYSTEM_CSV = "system.csv"
DECISIONS_CSV = "decisions.csv"
SUMMARY_JSON = "summary.json"
PHASES_JSON = "phases.json"

TIMEOUT = "timeout"
DROPPED = "dropped"
ERROR = "error"
BAD_RESPONSE = "bad_response"
JOB_FAILED = "job_failed"
CANCELLED = "cancelled"


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    DROPPED = "dropped"


def outcome(status: str) -> Outcome:
    if status == TIMEOUT:
        return Outcome.TIMEOUT
    if status == DROPPED:
        return Outcome.DROPPED
    if status.isdigit() and status.startswith("2"):
        return Outcome.OK
    return Outcome.ERROR


class RequestRecord(NamedTuple):
    """One scheduled arrival. Times in s since the run started; ``latency_s`` is from ``scheduled_s`` to the
    answer (send lag included); ``sent_s``/``latency_s`` are None when dropped."""

    id: int
    scheduled_s: float
    sent_s: float | None
    latency_s: float | None
    status: str
    work_ms: int
    phase: str

    @property
    def done_s(self) -> float | None:
        return None if self.latency_s is None else self.scheduled_s + self.latency_s


@dataclass(frozen=True)
class SecondRow:
    second: int
    offered: int
    sent: int
    dropped: int
    ok: int
    errors: int
    timeouts: int
    completed: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    p99_work0_s: float | None  # light requests only: queueing without simulated work
    error_rate: float | None  # (errors + timeouts) / sent


class SystemSample(NamedTuple):
    """One read of the status endpoint; all but ``t_s`` and ``ok`` are None when it failed."""

    t_s: float
    ok: bool
    queue_depth: int | None = None
    oldest_age_s: float | None = None
    unacked: int | None = None
    unacked_oldest_age_s: float | None = None
    pool_processes: int | None = None
    workers: int | None = None
    busy: int | None = None
    scaler_desired: int | None = None
    scaler_actual: int | None = None


class Decision(NamedTuple):
    t_s: float  # since the run started; negative for decisions made before it
    epoch: float
    direction: str
    from_: int | None
    to: int | None
    reason: str


def percentiles(values: Sequence[float] | np.ndarray) -> tuple[float | None, float | None, float | None]:
    """p50, p95, p99 (linear interpolation), or Nones for no values."""
    if len(values) == 0:
        return None, None, None
    p = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def per_second(records: Iterable[RequestRecord]) -> list[SecondRow]:
    """One row per second from 0 to the last second anything was scheduled or answered in."""
    counts: dict[str, Counter[int]] = {k: Counter() for k in ("offered", "sent", "dropped", "ok", "errors", "timeouts")}
    completed: Counter[int] = Counter()
    latencies: dict[int, list[float]] = {}
    light: dict[int, list[float]] = {}
    last = 0
    for r in records:
        s = int(r.scheduled_s)
        last = max(last, s)
        counts["offered"][s] += 1
        kind = outcome(r.status)
        if kind is Outcome.DROPPED:
            counts["dropped"][s] += 1
            continue
        counts["sent"][s] += 1
        if kind is Outcome.OK:
            counts["ok"][s] += 1
            latencies.setdefault(s, []).append(r.latency_s or 0.0)
            if r.work_ms == 0:
                light.setdefault(s, []).append(r.latency_s or 0.0)
            done = int(r.done_s or r.scheduled_s)
            completed[done] += 1
            last = max(last, done)
        elif kind is Outcome.TIMEOUT:
            counts["timeouts"][s] += 1
        else:
            counts["errors"][s] += 1
    rows = []
    for s in range(last + 1):
        c = {k: v[s] for k, v in counts.items()}
        p50, p95, p99 = percentiles(latencies.get(s, []))
        bad = c["errors"] + c["timeouts"]
        error_rate = bad / c["sent"] if c["sent"] else None
        p99_work0 = percentiles(light.get(s, []))[2]
        rows.append(
            SecondRow(
                s,
                **c,
                completed=completed[s],
                p50_s=p50,
                p95_s=p95,
                p99_s=p99,
                p99_work0_s=p99_work0,
                error_rate=error_rate,
            )
        )
    return rows


def _latency_block(latencies: Sequence[float]) -> dict[str, float | None]:
    p50, p95, p99 = percentiles(latencies)
    return {
        "count": len(latencies),
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "max": max(latencies) if latencies else None,
        "mean": float(np.mean(latencies)) if latencies else None,
    }


def summarize(records: Sequence[RequestRecord], load_duration_s: float) -> dict[str, Any]:
    """Totals over the run. Rates divide by ``load_duration_s`` (how long arrivals were offered) for the
    offered rate and by the time until the last answer for the achieved rate."""
    kinds = Counter(outcome(r.status) for r in records)
    error_kinds = Counter(r.status for r in records if outcome(r.status) is Outcome.ERROR)
    ok = [r for r in records if outcome(r.status) is Outcome.OK]
    lat = [r.latency_s or 0.0 for r in ok]
    lat0 = [r.latency_s or 0.0 for r in ok if r.work_ms == 0]
    lags = [r.sent_s - r.scheduled_s for r in records if r.sent_s is not None]
    sent = len(records) - kinds[Outcome.DROPPED]
    last_done = max((r.done_s or 0.0 for r in ok), default=0.0)
    answered = kinds[Outcome.OK] + kinds[Outcome.ERROR] + kinds[Outcome.TIMEOUT]
    return {
        "offered": len(records),
        "sent": sent,
        "ok": kinds[Outcome.OK],
        "errors": dict(sorted(error_kinds.items())),
        "errors_total": kinds[Outcome.ERROR],
        "timeouts": kinds[Outcome.TIMEOUT],
        "dropped": kinds[Outcome.DROPPED],
        "load_duration_s": load_duration_s,
        "offered_rate_rps": len(records) / load_duration_s if load_duration_s > 0 else None,
        "achieved_rate_rps": kinds[Outcome.OK] / max(load_duration_s, last_done) if ok else 0.0,
        "error_rate": (kinds[Outcome.ERROR] + kinds[Outcome.TIMEOUT]) / sent if sent else None,
        "latency_s": _latency_block(lat),
        "latency_work0_s": _latency_block(lat0),
        "send_lag_s": {"p99": percentiles(lags)[2], "max": max(lags) if lags else None},
        "accounting": {"sent": sent, "ok_errors_timeouts": answered, "balanced": sent == answered},
        "phases": summarize_phases(records),
    }


# A phase's first seconds show how the system meets a change of load; its steady figures start after them.
PHASE_SETTLE_S = 5.0


def summarize_phases(records: Sequence[RequestRecord], settle_s: float = PHASE_SETTLE_S) -> list[dict[str, Any]]:
    """Per phase, in order: counts over the whole phase and latency percentiles after its first ``settle_s``."""
    by_phase: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_phase.setdefault(r.phase, []).append(r)
    out = []
    for name, rs in by_phase.items():
        start = min(r.scheduled_s for r in rs)
        kinds = Counter(outcome(r.status) for r in rs)
        settled = [r for r in rs if outcome(r.status) is Outcome.OK and r.scheduled_s >= start + settle_s]
        out.append(
            {
                "phase": name,
                "start_s": start,
                "requests": len(rs),
                "errors": kinds[Outcome.ERROR],
                "timeouts": kinds[Outcome.TIMEOUT],
                "dropped": kinds[Outcome.DROPPED],
                "settled_latency_s": _latency_block([r.latency_s or 0.0 for r in settled]),
                "settled_latency_work0_s": _latency_block([r.latency_s or 0.0 for r in settled if r.work_ms == 0]),
            }
        )
    return sorted(out, key=lambda p: p["start_s"])


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6f}" if math.isfinite(v) else ""
    return v


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([_cell(v) for v in row])


def write_requests(path: Path, records: Iterable[RequestRecord]) -> None:
    write_csv(path, RequestRecord._fields, sorted(records, key=lambda r: r.id))


def write_seconds(path: Path, rows: Sequence[SecondRow]) -> None:
    header = [f.name for f in fields(SecondRow)]
    write_csv(path, header, ([getattr(r, h) for h in header] for r in rows))


def write_system(path: Path, samples: Iterable[SystemSample]) -> None:
    write_csv(path, SystemSample._fields, samples)


def write_decisions(path: Path, decisions: Iterable[Decision]) -> None:
    header = ["t_s", "epoch", "direction", "from", "to", "reason"]
    write_csv(path, header, sorted(decisions, key=lambda d: d.epoch))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def read_csv(path: Path) -> dict[str, list[float | None]]:
    """Columns of a numeric CSV written above, as floats (None for empty cells); {} if missing or empty.

    Non-numeric columns (status, phase, reason, direction) come back as their strings.
    """
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols: dict[str, list[Any]] = {k: [] for k in rows[0]}
    for row in rows:
        for k, v in row.items():
            cols[k].append(_parse_cell(v))
    return cols


def _parse_cell(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v
