"""The predictions: where one Redis becomes the limit, and the policies side by side at 1, 10 and 100 hosts.

Redis limit. The tutorial mix at a rising total arrival rate, spread over enough hosts that no work pool
is short (``RATE_PER_HOST`` each, a static pool at each host's maximum), with the micro-batchers modelled
(batches per light request fall as load per API process rises). Reported per rate: tasks/s, Redis's busy
share, the mean wait of a Redis operation and the p95 queue waits; the limit is the rate at which Redis
would be busy all the time, interpolated from the sweep (tasks/s and req/s).

Policies. Each host gets the same load (the tutorial step, 30 -> 90 -> 30 req/s per host; a 10x flash crowd
in 10 s; a day compressed into 10 minutes with heavy-tailed work), so a larger fleet is the same problem
with more of everything. Where one Redis cannot carry the fleet's tasks, the fleet gets the plan past one
Redis: queues sharded over ``shards_for`` servers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.fleet.calibration import Costs
from bench.fleet.model import FleetConfig
from bench.fleet.policies import Static, all_policies
from bench.fleet.scenarios import RunFigures, run
from bench.fleet.workload import Diurnal, FlashCrowd, Profile, Step, mix_work_ms, pareto_work_ms

WorkDraw = Callable[[int, np.random.Generator], np.ndarray]

RATE_PER_HOST = 90.0  # req/s of the mix one host serves comfortably (the step's peak)
SWEEP_SHARES = (0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05)  # of the analytic limit
SWEEP_SECONDS = 20.0
REDIS_HEADROOM = 0.6  # shard so that no Redis is busier than this at the peak
STEP_PER_HOST = ((30.0, 30.0), (60.0, 30.0), (60.0, 90.0), (90.0, 30.0))  # (seconds, req/s), as measured
FLASH_BASE_PER_HOST = 30.0
HOSTS = (1, 10, 100)
# The flash crowd and the day at 100 hosts (~1M simulated tasks per policy each) would take `make fleet-sim`
# past 5 minutes: they run at 1 and 10 hosts.
FLASH_MAX_HOSTS = 10
DIURNAL_MEAN_PER_HOST = 45.0  # req/s; a day compressed into 10 minutes, 18 -> 72 req/s per host


@dataclass(frozen=True, slots=True)
class SweepPoint:
    rate_rps: float
    tasks_per_s: float
    redis_busy: float
    redis_wait_mean_s: float
    work_wait_p95_s: float | None
    online_wait_p95_s: float | None


def tasks_per_request(costs: Costs, light_share: float = 0.6, batches_per_light: float = 1.0) -> float:
    """Tasks one request of the mix costs: its own work task, or its share of a batch."""
    return (1.0 - light_share) + light_share * batches_per_light


def analytic_limit_tasks(costs: Costs, hosts: int) -> float:
    """Tasks/s at which one Redis is busy all the time: what is left after the workers' background, per task."""
    background = costs.redis_idle_per_worker_s * 2 * hosts
    return max(0.0, 1.0 - background) / costs.redis_per_task_s


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def redis_sweep(costs: Costs, seed: int = 7) -> list[SweepPoint]:
    first_guess = analytic_limit_tasks(costs, 10) / tasks_per_request(costs)
    points = []
    for share in SWEEP_SHARES:
        rate = share * first_guess
        hosts = max(1, math.ceil(rate / RATE_PER_HOST))
        cfg = FleetConfig(hosts=hosts, grow_delay_s=costs.grow_delay_s)
        fig = run(Step(((SWEEP_SECONDS, rate),)), Static(8 * hosts), cfg, costs, seed)
        rec = fig.records
        warm = SWEEP_SECONDS / 4  # leave out the start: empty queues
        tasks = sum(1 for e, _, _ in rec.work if e >= warm) + sum(1 for e, _, _ in rec.online if e >= warm)
        points.append(
            SweepPoint(
                rate_rps=rate,
                tasks_per_s=tasks / (SWEEP_SECONDS - warm),
                redis_busy=fig.redis_busy,
                redis_wait_mean_s=fig.redis_wait_mean_s,
                work_wait_p95_s=_p95([w for e, w, _ in rec.work if e >= warm]),
                online_wait_p95_s=_p95([w for e, w, _ in rec.online if e >= warm]),
            )
        )
    return points


def limit_from_sweep(points: list[SweepPoint]) -> tuple[float, float]:
    """(req/s, tasks/s) at which Redis is busy all the time: busy share is linear in load below saturation,
    so fit it on the unsaturated points and solve for 1."""
    below = [p for p in points if p.redis_busy < 0.9]
    rates = np.array([p.rate_rps for p in below])
    tasks = np.array([p.tasks_per_s for p in below])
    busy = np.array([p.redis_busy for p in below])
    a, b = np.polyfit(rates, busy, 1)
    c, d = np.polyfit(tasks, busy, 1)
    return (1.0 - b) / a, (1.0 - d) / c


def shards_for(costs: Costs, hosts: int, peak_rps_per_host: float) -> int:
    need = hosts * peak_rps_per_host * tasks_per_request(costs)
    return max(1, math.ceil(need / (REDIS_HEADROOM * analytic_limit_tasks(costs, hosts))))


def scenario_profiles(hosts: int) -> dict[str, tuple[Profile, float, WorkDraw]]:
    """name -> (profile for the whole fleet, peak req/s per host, work per request)."""
    step = Step(tuple((s, r * hosts) for s, r in STEP_PER_HOST))
    flash = FlashCrowd(base=FLASH_BASE_PER_HOST * hosts, at_s=60.0, hold_s=60.0, duration_s=240.0)
    day = Diurnal(mean=DIURNAL_MEAN_PER_HOST * hosts, amplitude=0.6, period_s=600.0, duration_s=600.0)
    return {
        "step": (step, 90.0, mix_work_ms),
        "flash crowd": (flash, FLASH_BASE_PER_HOST * 10, mix_work_ms),
        "diurnal, heavy-tailed work": (day, day.peak / hosts, pareto_work_ms),
    }


def policy_grid(costs: Costs, hosts_list: tuple[int, ...] = HOSTS, seed: int = 11) -> list[tuple[str, RunFigures]]:
    out = []
    for hosts in hosts_list:
        for scenario, (profile, peak, works) in scenario_profiles(hosts).items():
            if scenario != "step" and hosts > FLASH_MAX_HOSTS:
                continue
            # A flash crowd outgrows the hosts: the fleet may add nodes (60 s each) up to twice its size.
            factor = 2.0 if scenario == "flash crowd" else 1.0
            cfg = FleetConfig(hosts=hosts, max_nodes_factor=factor, online_detail=False,
                              grow_delay_s=costs.grow_delay_s, redis_shards=shards_for(costs, hosts, peak))  # fmt: skip
            for policy in [*all_policies(hosts, cfg.procs_per_host, factor), Static(cfg.procs_per_host * hosts)]:
                out.append((scenario, run(profile, policy, cfg, costs, seed, works_ms=works)))
    return out
