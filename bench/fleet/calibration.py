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
import time
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


def load(path: Path = CALIBRATION_JSON) -> dict:
    return json.loads(path.read_text())


def arrivals(path: Path = CALIBRATION_JSON) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times s, work ms), sorted, of the recorded run, from the trace written beside ``path``: light
    requests as scheduled, work tasks as the work queue received them."""
    with gzip.open(path.with_name(ARRIVALS_CSV), "rt") as f:
        rows = [(float(r["t_s"]), float(r["work_ms"])) for r in csv.DictReader(f)]
    data = np.array(sorted(rows))
    return data[:, 0], data[:, 1]


def costs(cal: dict) -> Costs:
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


def loop_speed_s() -> float:
    """Seconds of a plain 10M-iteration Python loop: the machine's speed, recorded beside every figure."""
    t0 = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - t0
