"""The recorded measurement (``calibration.json``) as typed costs for the model, and the match rule.

``calibration.json`` is written by ``python -m bench.fleet.calibrate`` from a real run; nothing here invents
a figure. :func:`costs` turns it into the model's inputs; :func:`within` is the calibration's pass rule.

Tiny waits. The online queue's p95 wait is a few milliseconds: Redis round trips and the scheduling of a
shared 2-core machine, where a 2 ms difference is 40 % of the value and says nothing about capacity. A
relative tolerance alone would make the check a coin toss on noise, so a match is within 20 % **or**
within an absolute floor of ``WAIT_FLOOR_S`` (5 ms, 5 % of the 100 ms wait target: well under anything a
scaling decision or an SLO can see).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_JSON = Path(__file__).with_name("calibration.json")
ARRIVALS_CSV = "calibration-arrivals.csv.gz"  # beside the JSON: the recorded run's own arrivals and work
TOLERANCE = 0.20
WAIT_FLOOR_S = 0.005


@dataclass(frozen=True, slots=True)
class Costs:
    """What one task costs, measured; times in seconds."""

    work_overhead_s: float  # a work task's run time beyond its W (predict, Celery, result write)
    online_batch_s: float  # an online batch task's mean run time
    redis_per_task_s: float  # Redis CPU per task (publish, pop, ack, result, samples), under load
    redis_calls_per_task: float
    redis_per_chunk_s: float  # Redis CPU per 4,096-row job chunk (rows stored, read, results written)
    redis_idle_per_worker_s: float  # Redis CPU per second per worker at rest (heartbeats, polls, sweeps)
    loop_10m_s: float  # the machine's speed when measured
    # A task's wait with nobody ahead (pop, Celery's hand-off to a pool process), as quantiles 0, 5, ..., 100 %.
    pickup_quantiles_s: tuple[float, ...] = (0.0, 0.0)
    # The same for the work queue: waits of work tasks that arrived while a process was free (by heartbeat).
    work_pickup_quantiles_s: tuple[float, ...] = (0.0, 0.0)
    grow_delay_s: float = 0.25  # a scale-up decision until its processes serve


def load(path: Path = CALIBRATION_JSON) -> dict:
    return json.loads(path.read_text())


def arrivals(path: Path = CALIBRATION_JSON) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times s, work ms), sorted, of the recorded run, from the trace written beside ``path``: light
    requests as scheduled, work tasks as the work queue received them, each with the run time it had (less
    the modelled overhead, which the model adds back): a trace-driven replay of the recorded run."""
    with gzip.open(path.with_name(ARRIVALS_CSV), "rt") as f:
        rows = list(csv.DictReader(f))
    overhead_ms = 1000 * costs(load(path), path).work_overhead_s
    data = np.array(
        sorted(
            (float(r["t_s"]), max(0.001, 1000 * float(r["run_s"]) - overhead_ms) if r["kind"] == "work" else 0.0)
            for r in rows
        )
    )
    return data[:, 0], data[:, 1]


def work_pickups(cal: dict, path: Path = CALIBRATION_JSON) -> tuple[float, ...]:
    """Quantiles (0, 5, ..., 100 %) of the quiet phase's work tasks' waits when a process was free at arrival.

    From the trace: running tasks at a time t are those started by t and not yet ended; free means fewer
    than the pool size the heartbeats showed then. Such a wait is the worker's own hand-off (fetch after
    the previous ack, the main process passing the task to a child), which on a loaded host has a long tail.
    """
    with gzip.open(path.with_name(ARRIVALS_CSV), "rt") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "work"]
    if not rows or not cal.get("pool_timeline"):
        return (0.0, 0.0)
    enq = np.array([float(r["t_s"]) for r in rows])
    wait = np.array([float(r["wait_s"]) for r in rows])
    start, end = enq + wait, enq + wait + np.array([float(r["run_s"]) for r in rows])
    running = np.searchsorted(np.sort(start), enq, "right") - np.searchsorted(np.sort(end), enq, "right")
    pool = np.array(cal["pool_timeline"], dtype=float)
    size = pool[np.clip(np.searchsorted(pool[:, 0], enq, "right") - 1, 0, None), 1]
    # The quiet phase only, as for the online queue: in a step, heartbeats show processes asked for before
    # they serve, and the queueing behind them would pass for hand-off time.
    t0 = sum(p["seconds"] for p in cal["phases"][: [p["name"] for p in cal["phases"]].index("before")])
    quiet = (enq >= t0) & (enq < t0 + next(p["seconds"] for p in cal["phases"] if p["name"] == "before"))
    free = wait[(running < size) & quiet]
    return _pickups(np.percentile(free, range(0, 101, 5)).tolist()) if len(free) else (0.0, 0.0)


def grow_delay_s(cal: dict, default: float = 0.25) -> float:
    """Mean time from each recorded scale-up decision to the first heartbeat sample showing its size.

    An upper bound: heartbeats (1 s) and their sampling (1 s) add up to ~1 s between a process starting to
    serve and the recording seeing it. On a quiet machine a ``pool_grow`` takes ~0.25 s; on the loaded one
    of the recording it is what this measures."""
    timeline = cal.get("pool_timeline") or []
    delays = []
    for t, direction, _from, to, _reason in cal.get("scaler_decisions") or []:
        if direction != "up":
            continue
        seen = next((ts for ts, n in timeline if ts >= t and n >= to), None)
        if seen is not None:
            delays.append(seen - t)
    return float(np.mean(delays)) if delays else default


def costs(cal: dict, path: Path = CALIBRATION_JSON) -> Costs:
    """The model's inputs from a recording. Redis per task: the busiest phase's figure (least idle share)."""
    busiest = max(cal["phases"], key=lambda p: p["work_tasks"] + p["online_tasks"])
    redis = cal["redis"]
    idle = (redis.get("idle_cpu_per_s") or 0.0) / max(1, redis.get("idle_workers", 1))
    # The busiest phase's Redis CPU includes the idle background; per task, count only what load adds.
    tasks = busiest["work_tasks"] + busiest["online_tasks"]
    per_task = max(0.0, busiest["redis_cpu_s"] - idle * redis.get("idle_workers", 1) * busiest["seconds"]) / max(
        1, tasks
    )
    return Costs(
        work_overhead_s=max(0.0, cal["service"]["work_overhead_s"]),
        online_batch_s=cal["service"]["online_run_mean_s"] or 0.002,
        redis_per_task_s=per_task or busiest["redis_cpu_per_task_s"],
        redis_calls_per_task=busiest["redis_calls_per_task"],
        redis_per_chunk_s=redis["jobs"]["redis_cpu_per_chunk_s"],
        redis_idle_per_worker_s=idle,
        loop_10m_s=cal["machine"]["python_loop_10M_s"],
        pickup_quantiles_s=_pickups(cal["service"].get("pickup_quantiles_s") or [0.0, 0.0]),
        work_pickup_quantiles_s=work_pickups(cal, path),
        grow_delay_s=grow_delay_s(cal),
    )


def _pickups(quantiles: list[float]) -> tuple[float, ...]:
    """The recorded quantiles with the top one (the single largest wait of the phase, often a scheduling
    stall of a loaded machine) replaced by the one below it: one sample is not a distribution's tail."""
    q = list(quantiles)
    if len(q) > 2:
        q[-1] = q[-2]
    return tuple(q)


def within(simulated: float, measured: float, floor: float = 0.0, tolerance: float = TOLERANCE) -> bool:
    """True when ``simulated`` is within ``tolerance`` of ``measured``, or within ``floor`` of it."""
    diff = abs(simulated - measured)
    return diff <= floor or diff <= tolerance * abs(measured)
