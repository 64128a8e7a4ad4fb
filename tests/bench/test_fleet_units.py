"""The fleet model's pure parts: arrival generators, work draws, Redis as one FIFO server, policy rules."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from bench.fleet.calibration import Costs, within
from bench.fleet.model import Fleet, FleetConfig, Redis, process_seconds
from bench.fleet.policies import CeleryAutoscale, ScalerPolicy, SimSignal, Static, _Stabilised, ticker
from bench.fleet.predict import SweepPoint, analytic_limit_tasks, limit_from_sweep
from bench.fleet.scenarios import run
from bench.fleet.workload import Diurnal, FlashCrowd, Step, arrival_times, mix_work_ms, pareto_work_ms
from scaler.policy import Direction, Observation, PolicyConfig, PolicyState, decide

COSTS = Costs(
    work_overhead_s=0.002, online_batch_s=0.001, redis_per_task_s=0.0003, redis_calls_per_task=30.0,
    redis_per_chunk_s=0.002, redis_idle_per_worker_s=0.0, loop_10m_s=0.3, pickup_quantiles_s=(0.001, 0.002, 0.004),
)  # fmt: skip


def _poisson_ok(count: int, expected: float) -> bool:
    return abs(count - expected) <= 4.0 * math.sqrt(expected)  # 4 sigma: fails by chance once in ~16,000


def test_step_arrivals_follow_each_phase_rate():
    times = arrival_times(Step(((60.0, 30.0), (60.0, 90.0), (60.0, 30.0))), np.random.default_rng(1))
    assert _poisson_ok(int(((times >= 0) & (times < 60)).sum()), 1800)
    assert _poisson_ok(int(((times >= 60) & (times < 120)).sum()), 5400)
    assert _poisson_ok(int(((times >= 120) & (times < 180)).sum()), 1800)
    assert np.all(np.diff(times) >= 0)


def test_diurnal_arrivals_swing_around_their_mean():
    prof = Diurnal(mean=50.0, amplitude=0.6, period_s=600.0, duration_s=600.0)
    times = arrival_times(prof, np.random.default_rng(2))
    assert _poisson_ok(len(times), 50.0 * 600)
    trough = ((times < 60) | (times >= 540)).sum()  # around t = 0: rate ~ 50 * 0.4
    peak = ((times >= 240) & (times < 360)).sum()  # around t = 300: rate ~ 50 * 1.6
    assert peak > 3 * trough


def test_flash_crowd_reaches_ten_times_in_ten_seconds():
    prof = FlashCrowd(base=20.0, at_s=30.0, hold_s=30.0, duration_s=100.0)
    assert prof.rate(29.9) == 20.0 and prof.rate(40.0) == 200.0 and prof.rate(70.0) == 20.0
    times = arrival_times(prof, np.random.default_rng(3))
    assert _poisson_ok(int(((times >= 40) & (times < 70)).sum()), 200.0 * 30)
    assert _poisson_ok(int((times < 30).sum()), 20.0 * 30)


def test_work_draws():
    rng = np.random.default_rng(4)
    mix = mix_work_ms(100_000, rng)
    assert abs((mix == 0).mean() - 0.6) < 0.01 and abs((mix == 200).mean() - 0.15) < 0.01
    heavy = pareto_work_ms(200_000, rng)
    assert abs((heavy == 0).mean() - 0.6) < 0.01
    nonzero = heavy[heavy > 0]
    assert nonzero.min() >= 20.0 and nonzero.max() <= 10_000.0
    assert np.percentile(nonzero, 99.9) > 10 * np.median(nonzero)  # a heavy tail


def test_redis_is_one_fifo_server():
    r = Redis()
    assert r.serve(0.0, 0.001) == pytest.approx(0.001)
    assert r.serve(0.0, 0.001) == pytest.approx(0.002)  # queued behind the first
    assert r.serve(0.01, 0.001) == pytest.approx(0.011)  # idle by then
    assert r.wait_s_total == pytest.approx(0.001) and r.busy_s == pytest.approx(0.003)


def test_process_seconds_integrates_the_pool():
    pool = [(0.0, 2), (10.0, 4), (20.0, 1)]
    assert process_seconds(pool, 0.0, 30.0) == pytest.approx(20 + 40 + 10)
    assert process_seconds(pool, 5.0, 15.0) == pytest.approx(10 + 20)


def test_within_has_a_relative_tolerance_and_an_absolute_floor():
    assert within(1.19, 1.0) and not within(1.21, 1.0)
    assert within(0.008, 0.004, floor=0.005) and not within(0.008, 0.004)


def test_recorded_scale_up_is_reproduced_by_the_real_policy():
    """A tick the real scaler logged in the calibration run (the step to 90 req/s): up 3 -> 6."""
    obs = Observation(now_s=100.0, oldest_wait_s=0.083, wait_p95_s=0.0492, depth=6, arrival_rate_per_s=30.95,
                      service_time_s=0.1033, current_procs=3)  # fmt: skip
    state = PolicyState(window_start_s=50.0, last_change_s=70.0, last_target=3)
    d = decide(obs, state, PolicyConfig(min_procs=1, max_procs=8))
    assert (d.direction, d.target) == (Direction.UP, 6)


def test_sim_signal_measures_what_the_daemon_would():
    """The real ArrivalRate and TaskSamples over a simulated minute: rate and service time as generated."""
    rng = np.random.default_rng(5)
    times = arrival_times(Step(((60.0, 25.0),)), rng)
    works = np.full(len(times), 100.0)
    fleet = Fleet(FleetConfig(online_detail=False), COSTS, start_procs=8, seed=5)
    signal = SimSignal()
    seen = []

    def reader(f: Fleet):
        while True:
            yield f.env.timeout(1.0)
            seen.append(signal.read(f))

    fleet.run(times, works, 60.0, reader)
    last = seen[-1]
    assert last.arrival_rate_per_s == pytest.approx(25.0, rel=0.15)
    assert last.service_time_s == pytest.approx(0.100 + COSTS.work_overhead_s, rel=0.05)
    assert last.wait_p95_s is not None and last.wait_p95_s < 0.02  # 8 processes, 2.5 erlangs: no queue
    assert last.observation(fleet.paid).current_procs == 8


def test_scaler_policy_grows_an_overloaded_pool_and_shrinks_after_its_window():
    rng = np.random.default_rng(6)
    prof = Step(((40.0, 30.0), (80.0, 2.0)))
    times = arrival_times(prof, rng)
    fleet = Fleet(FleetConfig(online_detail=False), COSTS, start_procs=1, seed=6)
    fleet.run(times, np.full(len(times), 150.0), prof.duration_s, ticker(ScalerPolicy("ours", PolicyConfig())))
    ups = [c for c in fleet.changes if c[2] > c[1]]
    downs = [c for c in fleet.changes if c[2] < c[1]]
    assert ups and ups[0][0] <= 3.0  # 4.5 erlangs on 1 process: up within a few ticks
    assert max(to for _, _, to in ups) >= 6
    assert downs and all(t >= 40.0 + 30.0 for t, _, _ in downs)  # only after the 30 s window at the low rate


@dataclass
class _Work:
    busy: int
    waiting: list = field(default_factory=list)


@dataclass
class _Env:
    now: float


@dataclass
class _FleetView:
    """Just what CeleryAutoscale reads: pure logic, so a stand-in will do."""

    work: _Work
    env: _Env
    paid: int
    cfg: FleetConfig = field(default_factory=FleetConfig)


def test_celery_autoscale_grows_at_once_and_shrinks_only_after_keepalive():
    rule = CeleryAutoscale(max_per_host=5)
    assert rule.step(_FleetView(_Work(2, [1] * 10), _Env(10.0), paid=2)) == 5  # reserved 12, capped at max
    idle = _FleetView(_Work(0, []), _Env(30.0), paid=5)
    assert rule.step(idle) is None  # 20 s after growing: keepalive (30 s) not yet over
    idle.env.now = 41.0
    assert rule.step(idle) == 1  # down to what it holds (min 1), all at once


def test_hpa_window_scales_down_to_the_largest_recent_recommendation():
    rule = _Stabilised(min_procs=1, max_procs=100)
    assert rule.bound(0.0, 4, 10) == 8  # up at most max(2x, +4) per period
    assert rule.bound(15.0, 8, 3) == 8  # 10 was recommended 15 s ago: stay
    assert rule.bound(301.0, 8, 3) == 3  # the window has passed


def test_one_redis_is_busy_in_proportion_to_its_measured_cost():
    """Half the analytic limit keeps one Redis about half busy, and nothing is lost on the way."""
    rate = 0.5 * analytic_limit_tasks(COSTS, 1)  # one task per request here: every request has work
    fig = run(Step(((5.0, rate),)), Static(400), FleetConfig(hosts=1, procs_per_host=400), COSTS, 8,
              works_ms=lambda n, rng: np.full(n, 20.0))  # fmt: skip
    assert fig.redis_busy == pytest.approx(0.5, abs=0.05)
    assert len(fig.records.work) == pytest.approx(rate * 5.0, rel=0.05)


def test_limit_from_sweep_solves_the_busy_line_for_one():
    points = [SweepPoint(r, r * 1.2, r / 1000.0, 0.0, None, None) for r in (100.0, 300.0, 600.0, 800.0)]
    points.append(SweepPoint(1100.0, 1200.0, 1.0, 0.0, None, None))  # saturated: left out of the fit
    rps, tasks = limit_from_sweep(points)
    assert rps == pytest.approx(1000.0) and tasks == pytest.approx(1200.0)
