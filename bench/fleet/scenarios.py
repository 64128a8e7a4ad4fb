"""Runs of the model: one workload under one policy on one fleet, summarised per phase.

A run's figures, as the real benchmark measures them: per phase (tasks by enqueue time) the p95 queue
wait of each queue and the work pool's process-seconds; over the run, SLO attainment (the share of 10 s
windows whose p95 work-queue wait is under the 100 ms target), process-seconds and actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.fleet.calibration import WAIT_FLOOR_S, Costs, within
from bench.fleet.model import Fleet, FleetConfig, Records, process_seconds
from bench.fleet.policies import Policy, ScalerPolicy, Static, ticker
from bench.fleet.workload import Profile, Step, arrival_times, mix_work_ms
from scaler.policy import PolicyConfig

WAIT_TARGET_S = 0.1
SLO_WINDOW_S = 10.0
CALIBRATION_SEEDS = tuple(range(1, 9))  # the model's own noise, averaged out: p95 of a minute is a noisy figure


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    name: str
    work_wait_p95_s: float | None
    online_wait_p95_s: float | None
    process_seconds: float
    work_tasks: int
    online_tasks: int


@dataclass(frozen=True, slots=True)
class RunFigures:
    policy: str
    hosts: int
    phases: tuple[PhaseFigures, ...]
    slo_attainment: float  # share of windows with p95 work wait under target
    wait_p95_s: float | None  # over the whole run
    process_seconds: float
    actions: int
    redis_busy: float  # Redis's busy share over the run
    redis_wait_mean_s: float  # mean wait of a Redis operation
    records: Records


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def slo_attainment(work: list[tuple[float, float, float]], end_s: float, target_s: float = WAIT_TARGET_S) -> float:
    """Share of SLO windows (by enqueue time, with tasks) whose p95 wait is under target."""
    if not work:
        return 1.0
    enq = np.array([e for e, _, _ in work])
    wait = np.array([w for _, w, _ in work])
    ok = total = 0
    for lo in np.arange(0.0, end_s, SLO_WINDOW_S):
        w = wait[(enq >= lo) & (enq < lo + SLO_WINDOW_S)]
        if len(w):
            total += 1
            ok += bool(np.percentile(w, 95) <= target_s)
    return ok / total if total else 1.0


def run(
    profile: Profile,
    policy: Policy,
    cfg: FleetConfig,
    costs: Costs,
    seed: int,
    phases: tuple[tuple[str, float, float], ...] = (),
    works_ms=mix_work_ms,
) -> RunFigures:
    """Arrivals drawn from ``profile`` (rates for the whole fleet), work from ``works_ms``; see :func:`replay`."""
    rng = np.random.default_rng(seed)
    times = arrival_times(profile, rng)
    return replay(times, works_ms(len(times), rng), profile.duration_s, policy, cfg, costs, seed, phases)


def replay(
    times: np.ndarray,
    works: np.ndarray,
    end: float,
    policy: Policy,
    cfg: FleetConfig,
    costs: Costs,
    seed: int,
    phases: tuple[tuple[str, float, float], ...] = (),
    tick_phase_s: float = 0.0,
) -> RunFigures:
    """These arrivals (s) and works (ms) under ``policy``; ``phases`` are (name, start s, end s)."""
    start = policy.procs if isinstance(policy, Static) else max(cfg.start_procs, cfg.hosts)
    fleet = Fleet(cfg, costs, start_procs=start, seed=seed)
    rec = fleet.run(times, works, end + 2.0, ticker(policy, tick_phase_s))
    figures = []
    for name, lo, hi in phases:
        work = [w for e, w, _ in rec.work if lo <= e < hi]
        online = [w for e, w, _ in rec.online if lo <= e < hi]
        figures.append(
            PhaseFigures(name, _p95(work), _p95(online), process_seconds(rec.pool, lo, hi), len(work), len(online))
        )
    return RunFigures(
        policy=policy.name,
        hosts=cfg.hosts,
        phases=tuple(figures),
        slo_attainment=slo_attainment(rec.work, end),
        wait_p95_s=_p95([w for _, w, _ in rec.work]),
        process_seconds=process_seconds(rec.pool, 0.0, end),
        actions=fleet.actions,
        # over the arrivals, not the drain after them; at saturation the backlog served later counts: cap
        redis_busy=min(1.0, fleet.redis_busy_s / end / cfg.redis_shards),
        redis_wait_mean_s=fleet.redis_wait_mean_s,
        records=rec,
    )


def step_of(cal: dict) -> tuple[Step, tuple[tuple[str, float, float], ...]]:
    """The recorded run's step workload and its phases (name, start, end)."""
    t, bounds, parts = 0.0, [], []
    for ph in cal["phases"]:
        parts.append((float(ph["seconds"]), float(ph["rate_rps"])))
        bounds.append((ph["name"], t, t + ph["seconds"]))
        t += ph["seconds"]
    return Step(tuple(parts)), tuple(bounds)


def calibration_runs(
    cal: dict, costs: Costs, arrivals: tuple[np.ndarray, np.ndarray], seeds: tuple[int, ...] = CALIBRATION_SEEDS
) -> list[RunFigures]:
    """The recorded run's own arrivals on one host under the recorded scaler settings, once per seed."""
    profile, phases = step_of(cal)
    times, works = arrivals
    sc = cal["scaler"]
    cfg = FleetConfig(hosts=1, grow_delay_s=costs.grow_delay_s, procs_per_host=sc["max_procs"],
                      start_procs=sc["min_procs"], online_procs_per_host=sc["online_procs"])  # fmt: skip
    pcfg = PolicyConfig(min_procs=sc["min_procs"], max_procs=sc["max_procs"])
    end, phase = profile.duration_s, tick_phase(cal)
    return [
        replay(times, works, end, ScalerPolicy("inferpool", pcfg), cfg, costs, seed, phases, phase) for seed in seeds
    ]


def tick_phase(cal: dict, tick_s: float = 1.0) -> float:
    """Where in each second, relative to the load's start, the recorded scaler ticked (its decisions' times):
    a step is seen on the first whole tick interval after it, so the phase sets the reaction time."""
    times = [d[0] for d in cal.get("scaler_decisions", [])]
    if not times:
        return 0.0
    angles = [2 * np.pi * (t % tick_s) / tick_s for t in times]  # a circular mean: 0.9 and 0.1 average to 0.0
    mean = np.arctan2(np.mean(np.sin(angles)), np.mean(np.cos(angles)))
    return float((mean / (2 * np.pi)) % 1.0 * tick_s)


def mean_phase(runs: list[RunFigures], i: int, attr: str) -> float | None:
    vals = [getattr(r.phases[i], attr) for r in runs if getattr(r.phases[i], attr) is not None]
    return float(np.mean(vals)) if vals else None


def calibration_check(
    cal: dict, costs: Costs, arrivals: tuple[np.ndarray, np.ndarray], seeds: tuple[int, ...] = CALIBRATION_SEEDS
) -> list[dict]:
    """Per recorded phase: the simulated means over ``seeds`` and whether each is within tolerance."""
    runs = calibration_runs(cal, costs, arrivals, seeds)
    out = []
    for i, ph in enumerate(cal["phases"]):
        sim = {
            "name": ph["name"],
            "work_wait_p95_s": mean_phase(runs, i, "work_wait_p95_s"),
            "online_wait_p95_s": mean_phase(runs, i, "online_wait_p95_s"),
            "process_seconds": mean_phase(runs, i, "process_seconds"),
        }
        sim["work_ok"] = within(sim["work_wait_p95_s"] or 0.0, ph["work_wait_p95_s"] or 0.0, WAIT_FLOOR_S)
        sim["online_ok"] = within(sim["online_wait_p95_s"] or 0.0, ph["online_wait_p95_s"] or 0.0, WAIT_FLOOR_S)
        sim["procs_ok"] = within(sim["process_seconds"] or 0.0, ph["process_seconds"])
        out.append(sim)
    return out
