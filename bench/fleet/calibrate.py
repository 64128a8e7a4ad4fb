"""`make fleet-calibrate`: measure the real system under the tutorial step, for the fleet model to reproduce.

Runs the scaler benchmark's stack (`bench/scaler_bench.py`: Redis, an online worker, a work worker grown
and shrunk by ``inferpool scaler``, the API) under the same step workload (one-row ``POST /v1/predict``,
work 0/50/200 ms at p .6/.25/.15, Poisson 30 -> 90 -> 30 req/s), then a few bulk jobs. While it runs, a
recorder reads every 0.5 s: the work pool's size from the workers' heartbeats, every finished task's
(finish, queue wait, run time) from both queues' sample streams, and Redis's ``INFO`` (CPU, commandstats).

Writes ``bench/fleet/calibration.json``: per phase, p95 queue wait per queue, process-seconds of the work
pool, tasks, batches and Redis CPU and calls per task; the service-time figures the model needs (a work
task's overhead over its W, an online batch's run time); Redis's idle cost per worker; the bulk phase's
Redis cost per job chunk; and the machine's loop speed and the date (the file is a measurement, with its
provenance). ``--out`` writes elsewhere; ``--short`` runs short phases (a check, not a calibration).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis

from bench.fleet.calibration import ARRIVALS_CSV, CALIBRATION_JSON
from bench.scaler_bench import FULL, SEED, SHORT, policies, stack
from bench.scaler_report import Phase, process_seconds
from bench.speed import loop_speed_s
from inferpool import keys, model_store
from loadtest import LoadtestConfig, run_loadtest
from loadtest.profile import ProfileKind, ProfileSpec
from scaler.load_signal import SignalReader

SAMPLE_S = 0.5
IDLE_S = 10.0  # Redis's cost with workers, API and scaler up and no load: heartbeats, polls, sweeps
JOBS, JOB_ROWS = 6, 4 * 4096  # bulk phase: jobs of four 4,096-row chunks
QUEUES = (keys.QUEUE_WORK, keys.QUEUE_ONLINE)
PICKUP_QUANTILES = list(range(0, 101, 5))
WORK_MIX_MS = (50.0, 200.0)  # the work classes of the tutorial mix (work 0 rides the online queue)


@dataclass
class RedisSample:
    t: float  # epoch
    cpu_s: float  # used_cpu_sys + used_cpu_user
    calls: int  # sum of commandstats calls


@dataclass
class Recorder:
    """Polls Redis while the load runs: work-pool size, both queues' finished tasks, Redis's INFO."""

    client: redis.Redis
    processes: list[tuple[float, int]] = field(default_factory=list)
    tasks: dict[str, list[tuple[float, float, float]]] = field(default_factory=lambda: {q: [] for q in QUEUES})
    redis_samples: list[RedisSample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _last: dict[str, bytes] = field(default_factory=lambda: dict.fromkeys(QUEUES, b"0-0"))

    def redis_now(self) -> RedisSample:
        cpu = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
        return RedisSample(time.time(), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), calls)

    def run(self) -> None:
        reader = SignalReader(self.client, keys.QUEUE_WORK, "work")
        while not self.stop.wait(SAMPLE_S):
            try:
                self.processes.append((time.time(), reader.read().processes))
                self.redis_samples.append(self.redis_now())
                self._drain()
            except redis.RedisError as exc:
                print(f"  recorder: {type(exc).__name__}", file=sys.stderr)
        self._drain()

    def _drain(self) -> None:
        for q in QUEUES:
            for entry_id, f in self.client.xrange(keys.task_samples(q), b"(" + self._last[q], "+"):
                self._last[q] = entry_id
                self.tasks[q].append((int(entry_id.split(b"-")[0]) / 1000.0, float(f[b"w"]), float(f[b"r"])))


def _redis_delta(samples: list[RedisSample], lo: float, hi: float) -> tuple[float, int, float]:
    """(CPU s, calls, seconds) between the first and last samples inside [lo, hi)."""
    inside = [s for s in samples if lo <= s.t < hi]
    if len(inside) < 2:
        return 0.0, 0, 0.0
    a, b = inside[0], inside[-1]
    return b.cpu_s - a.cpu_s, b.calls - a.calls, b.t - a.t


def _q(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _enqueued(tasks: list[tuple[float, float, float]], lo: float, hi: float) -> list[tuple[float, float, float]]:
    return [t for t in tasks if lo <= t[0] - t[2] - t[1] < hi]


def _phase_record(rec: Recorder, ph: Phase, lo: float, hi: float, online_requests: int) -> dict:
    work = _enqueued(rec.tasks[keys.QUEUE_WORK], lo, hi)
    online = _enqueued(rec.tasks[keys.QUEUE_ONLINE], lo, hi)
    cpu_s, calls, span = _redis_delta(rec.redis_samples, lo, hi)
    tasks = len(work) + len(online)
    # Redis's counters cover [first sample, last sample] of the phase; tasks over the whole phase: scale.
    per = span / (hi - lo) if hi > lo else 1.0
    return {
        "name": ph.name,
        "seconds": ph.seconds,
        "rate_rps": ph.rate,
        "work_tasks": len(work),
        "online_tasks": len(online),
        "online_requests": online_requests,
        "work_wait_p50_s": _q([w for _, w, _ in work], 50),
        "work_wait_p95_s": _q([w for _, w, _ in work], 95),
        "online_wait_p50_s": _q([w for _, w, _ in online], 50),
        "online_wait_p95_s": _q([w for _, w, _ in online], 95),
        "work_run_mean_s": _mean([r for _, _, r in work]),
        "online_run_mean_s": _mean([r for _, _, r in online]),
        "process_seconds": process_seconds(rec.processes, lo, hi),
        "processes_mean": process_seconds(rec.processes, lo, hi) / ph.seconds,
        "redis_cpu_s": cpu_s,
        "redis_calls": calls,
        "redis_cpu_per_task_s": cpu_s / max(1.0, tasks * per),
        "redis_calls_per_task": calls / max(1.0, tasks * per),
    }


def _work_overhead_s(work: list[tuple[float, float, float]]) -> float:
    """A work task's run time beyond its W: the median excess over the nearest work class."""
    excess = [r - min(WORK_MIX_MS, key=lambda w: abs(r * 1000 - w)) / 1000 for _, _, r in work]
    return float(np.median(excess)) if excess else 0.0


def _jobs_phase(url: str, rec: Recorder) -> dict:
    """Bulk jobs one after another: Redis CPU and calls per 4,096-row chunk (rows stored, read, results)."""
    rng = np.random.default_rng(SEED)
    body = {"instances": rng.random((JOB_ROWS, 20)).round(4).tolist(), "work_ms": 0}
    payload = json.dumps(body).encode()
    chunks = 0
    before = rec.redis_now()
    t0 = time.monotonic()
    with httpx.Client(timeout=60) as http:
        for _ in range(JOBS):
            r = http.post(f"{url}/v1/jobs", content=payload, headers={"content-type": "application/json"})
            r.raise_for_status()
            job_id = r.json()["job_id"]
            while http.get(f"{url}/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
                time.sleep(0.05)
            chunks += JOB_ROWS // 4096
    after = rec.redis_now()
    return {
        "jobs": JOBS,
        "chunks": chunks,
        "seconds": time.monotonic() - t0,
        "redis_cpu_per_chunk_s": (after.cpu_s - before.cpu_s) / chunks,
        "redis_calls_per_chunk": (after.calls - before.calls) / chunks,
    }


def _online_requests(load_dir: Path, bounds: list[tuple[float, float]]) -> list[int]:
    """Work-0 requests scheduled per phase (load-test record; relative seconds)."""
    from loadtest import records

    req = records.read_csv(load_dir / records.REQUESTS_CSV)
    sched, work = req.get("scheduled_s", []), req.get("work_ms", [])
    return [
        sum(1 for s, w in zip(sched, work, strict=False) if s is not None and lo <= s < hi and not w)
        for lo, hi in bounds
    ]


def save_arrivals(load_dir: Path, work: list[tuple[float, float, float]], start: float, path: Path) -> int:
    """The run's arrivals, so the model replays the very same workload: every light request as the load
    generator scheduled it (``request``, work 0), and every work task as the work queue received it
    (``work``: the system's own enqueue stamp, relative to the load's start; its W from its run time; its
    measured wait and run for reference). The queue's arrivals, not the generator's: a loaded API passes
    requests on in bursts, and the queue waits reflect those bursts."""
    from loadtest import records

    req = records.read_csv(load_dir / records.REQUESTS_CSV)
    rows = [
        f"request,{s:.4f},0,,"
        for s, w in zip(req["scheduled_s"], req["work_ms"], strict=True)
        if s is not None and not w
    ]
    for finish, wait, run in work:
        w_ms = min(WORK_MIX_MS, key=lambda w: abs(run * 1000 - w))
        rows.append(f"work,{finish - run - wait - start:.4f},{w_ms:.0f},{wait:.4f},{run:.4f}")
    with gzip.open(path, "wt") as f:
        f.write("kind,t_s,work_ms,wait_s,run_s\n" + "\n".join(rows) + "\n")
    return len(rows)


def calibrate(phases: tuple[Phase, ...], out_path: Path, run_dir: Path, runs: int = 2) -> dict:
    """``runs`` runs of the same arrivals (fixed seed), each on a fresh stack. Per phase, the figures are the
    mean over the runs (one run's p95 of a minute differs from the next by 20-40 % on a shared machine);
    each run's figures are kept under ``runs``; the trace, timeline and decisions are the last run's."""
    model_dir = run_dir / "models"
    model_store.train_reference(model_dir)
    results = []
    for i in range(runs):
        print(f"run {i + 1} of {runs}", flush=True)
        results.append(_one_run(phases, out_path, run_dir / f"run{i + 1}", model_dir))
    result = results[-1]
    result["runs"] = [r["phases"] for r in results]
    result["phases"] = [_mean_phase([r["phases"][i] for r in results]) for i in range(len(phases))]
    result["machine"]["python_loop_10M_s"] = round(
        float(np.mean([r["machine"]["python_loop_10M_s"] for r in results])), 3
    )
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _mean_phase(records: list[dict]) -> dict:
    out = dict(records[0])
    for k, v in out.items():
        vals = [r[k] for r in records]
        if isinstance(v, float) and all(isinstance(x, float) for x in vals):
            out[k] = float(np.mean(vals))
    return out


def _one_run(phases: tuple[Phase, ...], out_path: Path, run_dir: Path, model_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    speed = loop_speed_s()
    policy = policies(8, 8)["inferpool"]
    profile = run_dir / "profile.csv"
    t, rows = 0, []
    for ph in phases:
        rows.append(f"{t},{ph.rate:g}")
        t += ph.seconds
    profile.write_text("second,rate\n" + "\n".join(rows) + "\n")
    with stack(policy, model_dir, run_dir / "stack", "INFO") as (url, client):
        rec = Recorder(client)
        thread = threading.Thread(target=rec.run, daemon=True)
        thread.start()
        time.sleep(IDLE_S)
        idle_cpu, idle_calls, idle_span = _redis_delta(rec.redis_samples, 0.0, time.time() + 1)
        cfg = LoadtestConfig(
            url=url, rate=phases[0].rate, duration_s=float(t), profile=ProfileSpec(ProfileKind.CSV, path=profile),
            seed=SEED, out_dir=run_dir / "load", progress=False,
        )  # fmt: skip
        print(f"step workload: {t} s ...", flush=True)
        load_dir = run_loadtest(cfg)
        time.sleep(3.0)
        print("bulk jobs ...", flush=True)
        jobs = _jobs_phase(url, rec)
        rec.stop.set()
        thread.join(10)
        decisions = [json.loads(d) for d in client.lrange(keys.SCALER_DECISIONS, 0, -1)]
    start = json.loads((load_dir / "summary.json").read_text())["start_epoch"]
    rel, t0 = [], 0.0
    for ph in phases:
        rel.append((t0, t0 + ph.seconds))
        t0 += ph.seconds
    online_reqs = _online_requests(load_dir, rel)
    save_arrivals(load_dir, rec.tasks[keys.QUEUE_WORK], start, out_path.with_name(ARRIVALS_CSV))
    out_phases = [
        _phase_record(rec, ph, start + lo, start + hi, n)
        for ph, (lo, hi), n in zip(phases, rel, online_reqs, strict=True)
    ]
    all_work = rec.tasks[keys.QUEUE_WORK]
    quiet = next(ph for ph in phases if ph.name == "before")
    lo, hi = rel[phases.index(quiet)]
    quiet_waits = [w for _, w, _ in _enqueued(rec.tasks[keys.QUEUE_ONLINE], start + lo, start + hi)]
    online_runs = [r for _, _, r in rec.tasks[keys.QUEUE_ONLINE]]
    result = {
        "what": "the real stack under the tutorial step (bench/fleet/calibrate.py): the model's inputs and targets",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python_loop_10M_s": round(speed, 3), "load_average": os.getloadavg()},
        "workload": {"mix_ms": [[0, 0.6], [50, 0.25], [200, 0.15]], "seed": SEED, "arrivals": "poisson"},
        "scaler": {"policy": "erlang", "min_procs": 1, "max_procs": 8, "online_procs": 2},
        "phases": out_phases,
        "service": {
            "work_overhead_s": _work_overhead_s(all_work),
            "online_run_mean_s": _mean(online_runs),
            "online_run_p95_s": _q(online_runs, 95),
            # A task's wait with nobody ahead of it (pop, Celery's hand-off to a pool process): the online
            # queue's waits in the quiet phase, where batches almost never queue behind each other.
            "pickup_quantiles_s": [round(float(x), 5) for x in np.percentile(quiet_waits, PICKUP_QUANTILES)],
        },
        "pool_timeline": [[round(t - start, 1), n] for t, n in rec.processes[::2]],
        "scaler_decisions": [
            [round(d["t"] - start, 2), d["direction"], d["from"], d["to"], d["reason"]] for d in reversed(decisions)
        ],
        "redis": {
            "idle_cpu_per_s": idle_cpu / idle_span if idle_span else None,
            "idle_calls_per_s": idle_calls / idle_span if idle_span else None,
            "idle_workers": 2,
            "jobs": jobs,
        },
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="short phases: a check, not a calibration")
    p.add_argument("--out", type=Path, default=CALIBRATION_JSON)
    p.add_argument("--runs", type=int, default=2, help="runs of the same arrivals to average (default 2)")
    ns = p.parse_args()
    run_dir = Path("results") / f"fleet-calibrate-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    res = calibrate(SHORT if ns.short else FULL, ns.out, run_dir, ns.runs)
    print(f"machine: 10M-iteration Python loop {res['machine']['python_loop_10M_s']:.2f} s")
    for ph in res["phases"]:
        print(
            f"{ph['name']:>7} {ph['rate_rps']:>4.0f} req/s: "
            f"work p95 wait {1000 * (ph['work_wait_p95_s'] or 0):6.1f} ms, "
            f"online p95 wait {1000 * (ph['online_wait_p95_s'] or 0):5.1f} ms, process-s {ph['process_seconds']:6.1f}, "
            f"Redis {1e6 * ph['redis_cpu_per_task_s']:5.0f} us/task, {ph['redis_calls_per_task']:.1f} calls/task"
        )
    jobs = res["redis"]["jobs"]
    per_chunk = f"{1e6 * jobs['redis_cpu_per_chunk_s']:.0f} us and {jobs['redis_calls_per_chunk']:.0f} calls"
    print(f"bulk: Redis {per_chunk} per chunk")
    print(f"written: {ns.out}")


if __name__ == "__main__":
    main()
