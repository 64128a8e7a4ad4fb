"""`make fleet-sim`: the calibrated fleet model's predictions, with charts and a report.

1. Calibration: the recorded step workload (``calibration.json``) replayed in the model, per phase
   against the measurement (the same check as ``tests/bench/test_fleet_calibration.py``).
2. Where one Redis becomes the limit (tasks/s and req/s of the tutorial mix) and the wait it adds.
3. The tutorial policy, Celery ``--autoscale``, an HPA, a KEDA list-length scaler and ours (and a static
   pool for reference) at 1, 10 and 100 hosts, on SLO attainment, process-seconds and actions.

Prints the tables and writes ``out/fleet-sim/report.md`` and its PNG charts. ``--quick`` leaves out the
100-host runs (the bulk of the time).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from bench.fleet import calibration, predict, report, scenarios
from bench.fleet.calibration import CALIBRATION_JSON
from bench.speed import loop_speed_s

OUT = Path("out/fleet-sim")
SCENARIO_CHARTS = ("step", "flash crowd", "diurnal, heavy-tailed work")


def _chart(scenario: str) -> str:
    return f"pool-{re.sub(r'[^a-z0-9]+', '-', scenario)}-10-hosts.png"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibration", type=Path, default=CALIBRATION_JSON)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true", help="1 and 10 hosts only")
    ns = p.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cal = calibration.load(ns.calibration)
    costs = calibration.costs(cal)
    speed = loop_speed_s()
    machine = (
        f"recorded {cal['date_utc']} on {cal['machine']['cores']} cores, 10M-iteration Python loop "
        f"{cal['machine']['python_loop_10M_s']:.2f} s; simulated now (loop {speed:.2f} s)"
    )
    print(machine, flush=True)

    arrivals = calibration.arrivals(ns.calibration)
    checks = scenarios.calibration_check(cal, costs, arrivals)
    cal_table = report.calibration_table(cal, checks)
    print("\n1. Calibration: the recorded step workload, real / simulated (mean of 8 seeds)\n" + cal_table, flush=True)
    sim_pool = scenarios.calibration_runs(cal, costs, arrivals, (1,))[0].records.pool
    report.chart_calibration(cal, sim_pool, ns.out / "calibration.png")

    points = predict.redis_sweep(costs)
    limit_rps, limit_tasks = predict.limit_from_sweep(points)
    sweep = report.sweep_table(points, points[0])
    print(
        f"\n2. One Redis: limit ~{limit_tasks:,.0f} tasks/s = ~{limit_rps:,.0f} req/s of the mix\n{sweep}", flush=True
    )
    report.chart_sweep(points, limit_rps, ns.out / "redis-limit.png")

    hosts = predict.HOSTS[:2] if ns.quick else predict.HOSTS
    grid = predict.policy_grid(costs, hosts)
    pol = report.policy_table(grid)
    head = "per host: step 30 -> 90 -> 30 req/s; flash crowd 30 -> 300 req/s in 10 s; a day in 10 min, 18 -> 72 req/s"
    print(f"\n3. Policies ({head})\n{pol}")
    report.chart_policies(grid, ns.out / "policies.png")
    for scenario in SCENARIO_CHARTS:
        report.chart_timelines(grid, scenario, 10, ns.out / _chart(scenario))

    charts = "\n\n".join(f"![{s}]({_chart(s)})" for s in SCENARIO_CHARTS)
    doc = f"""# Fleet simulation

{machine}; costs: Redis {1e6 * costs.redis_per_task_s:.0f} us per task, {1e6 * costs.redis_per_chunk_s:.0f} us per
4,096-row job chunk, {1e3 * costs.redis_idle_per_worker_s:.2f} ms/s per idle worker; a work task's overhead
{1e3 * costs.work_overhead_s:.1f} ms beyond W; an online batch {1e3 * costs.online_batch_s:.2f} ms.

## 1. Calibration (real / simulated, p95 queue wait and process-seconds per phase)

A wait matches within 20 % or within {1000 * calibration.WAIT_FLOOR_S:.0f} ms; process-seconds within 20 %.

{cal_table}

![calibration](calibration.png)

## 2. Where one Redis becomes the limit

About **{limit_tasks:,.0f} tasks/s**, **{limit_rps:,.0f} req/s** of the tutorial mix (API processes at
{predict.RATE_PER_HOST:.0f} req/s each, so light requests ride batches of about one).

{sweep}

![redis](redis-limit.png)

## 3. Policies side by side

Per host: the step (30 -> 90 -> 30 req/s), a 10x flash crowd in 10 s (30 -> 300 req/s, held 60 s; the
fleet may add nodes, 60 s each, up to twice its size), and a day compressed into 10 minutes (18 -> 72 req/s)
with heavy-tailed work (60 % none, the rest Pareto 1.5 from 20 ms, capped at 10 s). The last two run at 1
and 10 hosts only (100 hosts would take `make fleet-sim` past 5 minutes). Wait target 100 ms p95; SLO met =
share of 10 s windows whose p95 work-queue wait is under it. Where one Redis cannot carry the fleet, its queues are
sharded (see the README's "At scale").

{pol}

![policies](policies.png)

{charts}
"""
    (ns.out / "report.md").write_text(doc)
    print(f"\nreport: {ns.out / 'report.md'} ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
