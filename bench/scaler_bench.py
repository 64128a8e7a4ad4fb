"""`make scaler-bench`: the tutorial's autoscaling experiment, four pool policies side by side in one run.

Workload (issue 6): one-row ``POST /v1/predict`` with simulated work 0/50/200 ms at p 0.6/0.25/0.15,
Poisson arrivals at 30 req/s, a step to 90 req/s for 60 s, then 30 again (the same seed, hence the same
arrivals and work, for every policy). A request with work runs alone on the ``work`` queue, the pool under
test; work-0 rows ride the micro-batcher to the fixed online worker.

Each policy gets a fresh stack (its own Redis, online worker, API) and the work worker it needs:

* ``tutorial``  ``inferpool scaler --policy tutorial``: start at 1, +1 when the median latency of the pool's
  tasks is over 100 ms, -1 under 50 ms, max 5, each second;
* ``autoscale`` Celery's own ``--autoscale=5,1``;
* ``static``    a pool fixed at the maximum (``--max``, default 8: inferpool's maximum);
* ``inferpool`` ``inferpool scaler`` (Erlang-C sizing, windowed scale-down), 1..max.

Measured per policy and phase: latency percentiles (all requests, by the load generator), queue wait
percentiles (the work tasks' own samples, by enqueue time), seconds until the p95 queue wait is back under
100 ms after the step, process-seconds of the work pool (heartbeats every 0.5 s) and scaling actions.
Prints a table and writes ``results/scaler-bench-<time>.json`` (load-test files under the same name).

``--short`` runs 10/20/30/60 s phases instead of 30/60/60/90 s: a quick check, not the experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.scaler_report import Phase, analyse, table
from cli.local_redis import LocalRedis, free_port
from inferpool import keys, model_store
from loadtest import LoadtestConfig, run_loadtest
from loadtest.profile import ProfileKind, ProfileSpec
from scaler.load_signal import SignalReader
from workers.worker import worker_argv

SEED = 20_240_606
READY_TIMEOUT_S = 60.0
SAMPLE_S = 0.5
FULL = (Phase("warmup", 30, 30.0), Phase("before", 60, 30.0), Phase("step", 60, 90.0), Phase("after", 90, 30.0))
SHORT = (Phase("warmup", 10, 30.0), Phase("before", 20, 30.0), Phase("step", 30, 90.0), Phase("after", 60, 30.0))
TUTORIAL_MAX = 5
WORKER = "work@bench"


@dataclass(frozen=True)
class Policy:
    name: str
    worker_args: tuple[str, ...]  # replaces the work worker's "-c N"
    scaler_env: dict[str, str] | None = None  # None: no scaler runs


def policies(max_procs: int, static_procs: int) -> dict[str, Policy]:
    scaler = {"INFERPOOL_SCALER_ACTUATOR": "celery", "INFERPOOL_WORK_CONCURRENCY_MIN": "1"}
    return {
        "tutorial": Policy("tutorial", ("-c", "1"), {
            **scaler, "INFERPOOL_SCALER_POLICY": "tutorial", "INFERPOOL_WORK_CONCURRENCY_MAX": str(TUTORIAL_MAX),
            "INFERPOOL_SCALER_WORKER_MAX_PROCS": str(TUTORIAL_MAX),
        }),
        "autoscale": Policy("autoscale", ("--autoscale", f"{TUTORIAL_MAX},1")),
        "static": Policy("static", ("-c", str(static_procs))),
        "inferpool": Policy("inferpool", ("-c", "1"), {
            **scaler, "INFERPOOL_SCALER_POLICY": "erlang", "INFERPOOL_WORK_CONCURRENCY_MAX": str(max_procs),
            "INFERPOOL_SCALER_WORKER_MAX_PROCS": str(max_procs),
        }),
    }  # fmt: skip


@dataclass
class Recorder:
    """Polls Redis while the load runs: work-pool processes, and every work task's (finish, wait, run)."""

    client: redis.Redis
    processes: list[tuple[float, int]] = field(default_factory=list)  # (epoch, processes)
    tasks: list[tuple[float, float, float]] = field(default_factory=list)  # (finish epoch, wait s, run s)
    stop: threading.Event = field(default_factory=threading.Event)
    _last: bytes = b"0-0"

    def run(self) -> None:
        reader = SignalReader(self.client, keys.QUEUE_WORK, "work")
        while not self.stop.wait(SAMPLE_S):
            try:
                self.processes.append((time.time(), reader.read().processes))
                self._drain()
            except redis.RedisError as exc:
                print(f"  recorder: {type(exc).__name__}", file=sys.stderr)
        self._drain()

    def _drain(self) -> None:
        for entry_id, fields in self.client.xrange(keys.task_samples(keys.QUEUE_WORK), b"(" + self._last, "+"):
            self._last = entry_id
            finish = int(entry_id.split(b"-")[0]) / 1000.0
            self.tasks.append((finish, float(fields[b"w"]), float(fields[b"r"])))


def _wait_ready(url: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a process of the stack exited during start; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready in {READY_TIMEOUT_S:.0f} s")


@contextmanager
def stack(policy: Policy, model_dir: Path, var: Path, scaler_log_level: str) -> Iterator[tuple[str, redis.Redis]]:
    """Redis, online worker, the policy's work worker, API and (maybe) scaler; yields (API URL, Redis client)."""
    var.mkdir(parents=True, exist_ok=True)
    srv = LocalRedis(var / "redis", aof=False).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERPOOL_")}
    env.update(REDIS_URL=srv.url, INFERPOOL_MODEL_DIR=str(model_dir), INFERPOOL_LOG_LEVEL="WARNING",
               PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="metrics-", dir=var))  # fmt: skip
    procs: list[subprocess.Popen] = []

    def spawn(name: str, argv: list[str], **extra: str) -> None:
        port_env = {
            "INFERPOOL_WORKER_METRICS_PORT": str(free_port()),
            "INFERPOOL_SCALER_METRICS_PORT": str(free_port()),
        }
        log = (var / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(argv, env={**env, **port_env, **extra}, stdout=log, stderr=subprocess.STDOUT))

    cli = [sys.executable, "-m", "cli.main"]
    work = worker_argv("work", [keys.QUEUE_WORK], 1, WORKER)
    i = work.index("-c")
    work[i : i + 2] = policy.worker_args
    port = free_port()
    try:
        spawn("worker-online", [*cli, "worker", "--role", "online"])
        spawn("worker-work", work)
        spawn("api", [*cli, "api", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, procs)
        if policy.scaler_env is not None:
            spawn("scaler", [*cli, "scaler"], INFERPOOL_LOG_LEVEL=scaler_log_level, **policy.scaler_env)
        yield url, redis.Redis.from_url(srv.url)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        srv.stop(kill=True)


def run_policy(policy: Policy, phases: tuple[Phase, ...], model_dir: Path, out: Path, log_level: str) -> dict:
    profile = out / "profile.csv"
    out.mkdir(parents=True, exist_ok=True)
    t, rows = 0, []
    for ph in phases:
        rows.append(f"{t},{ph.rate:g}")
        t += ph.seconds
    profile.write_text("second,rate\n" + "\n".join(rows) + "\n")
    with stack(policy, model_dir, out / "stack", log_level) as (url, client):
        time.sleep(3.0)  # the scaler's first ticks; pools settle at their start size
        rec = Recorder(client)
        thread = threading.Thread(target=rec.run, daemon=True)
        thread.start()
        cfg = LoadtestConfig(
            url=url, rate=phases[0].rate, duration_s=float(t), profile=ProfileSpec(ProfileKind.CSV, path=profile),
            seed=SEED, out_dir=out / "load", progress=False,
        )  # fmt: skip
        load_dir = run_loadtest(cfg)
        time.sleep(2.0)
        rec.stop.set()
        thread.join(10)
        decisions = [json.loads(d) for d in client.lrange(keys.SCALER_DECISIONS, 0, -1)]
    return analyse(policy.name, phases, load_dir, rec.processes, rec.tasks, decisions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="short phases: a quick check")
    p.add_argument("--max", type=int, default=8, help="inferpool's maximum processes (default 8)")
    p.add_argument("--static-procs", type=int, help="size of the static pool (default --max)")
    p.add_argument("--policies", nargs="+", default=["tutorial", "autoscale", "static", "inferpool"])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--scaler-log-level", default="INFO", help="DEBUG logs every tick's hold and its reason")
    ns = p.parse_args()
    phases = SHORT if ns.short else FULL
    chosen = policies(ns.max, ns.static_procs or ns.max)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = ns.out / f"scaler-bench-{stamp}"
    model_dir = run_dir / "models"
    model_store.train_reference(model_dir)
    total = sum(ph.seconds for ph in phases)
    results = {"phases": [ph._asdict() for ph in phases], "seed": SEED, "cores": os.cpu_count(), "policies": {}}
    for name in ns.policies:
        print(f"{name}: {total} s of load ...", flush=True)
        results["policies"][name] = run_policy(chosen[name], phases, model_dir, run_dir / name, ns.scaler_log_level)
    print()
    print(table(results))
    path = ns.out / f"scaler-bench-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {path}  (load-test records under {run_dir})")


if __name__ == "__main__":
    main()
