"""``inferpool up``: the whole system on one machine, stopped cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from inferpool import model_store
from inferpool.local_redis import LocalRedis
from inferpool.processes import PROCESSES, ProcessSpec
from inferpool.settings import get_settings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
MAX_RESTARTS = 5


class Supervisor:
    """Starts child processes, restarts one that crashes (a few times), stops them all in reverse order."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.specs: dict[str, ProcessSpec] = {}
        self.restarts: dict[str, int] = {}

    def start(self, spec: ProcessSpec) -> None:
        log = (self.log_dir / f"{spec.name}.log").open("ab")
        argv = [sys.executable, "-m", "inferpool.cli", *spec.argv[1:]]
        self.procs[spec.name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.specs[spec.name] = spec

    def check(self) -> None:
        for name, p in list(self.procs.items()):
            code = p.poll()
            if code is None:
                continue
            n = self.restarts.get(name, 0)
            if n >= MAX_RESTARTS:
                print(f"! {name} exited with {code}; gave up after {n} restarts (see {self.log_dir}/{name}.log)")
                del self.procs[name]
                continue
            print(f"! {name} exited with {code}; restarting (see {self.log_dir}/{name}.log)")
            self.restarts[name] = n + 1
            self.start(self.specs[name])

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_ready(url: str, sup: Supervisor) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        sup.check()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def up(ns: argparse.Namespace) -> int:
    s = get_settings()
    var = Path(ns.var_dir).resolve()
    (var / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # On one machine the scaler grows the work worker's pool, then starts more work workers beside it.
    env.setdefault("INFERPOOL_SCALER_ACTUATOR", "process")
    redis_proc: LocalRedis | None = None
    if not os.environ.get("REDIS_URL"):
        redis_proc = LocalRedis(var / "redis", aof=True).start()
        env["REDIS_URL"] = redis_proc.url
        print(f"redis    {redis_proc.url} (private, AOF in {var / 'redis'})")
    m, trained = model_store.ensure_reference(s.model_dir)
    if trained:
        print(f"model    trained reference model {m.version} into {s.model_dir}")
    metrics_dir = var / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    flower_password = None
    if not ns.no_flower and not (s.flower_user and s.flower_password):
        flower_password = secrets.token_urlsafe(12)
        env["INFERPOOL_FLOWER_USER"], env["INFERPOOL_FLOWER_PASSWORD"] = "admin", flower_password

    sup = Supervisor(env, var / "logs")
    stopping = False

    def _stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        for spec in PROCESSES:
            if (spec.name == "scaler" and ns.no_scaler) or (spec.name == "flower" and ns.no_flower):
                continue
            sup.start(spec)
        api = f"http://{s.api_host}:{s.api_port}"
        if not _wait_ready(api, sup):
            print(f"! the API did not become ready within {READY_TIMEOUT_S:g} s; logs in {var / 'logs'}")
            return 1
        _banner(api, s, flower_password, var)
        if ns.run:
            return subprocess.call(ns.run, env={**env, "INFERPOOL_API_URL": api})
        while not stopping:
            sup.check()
            time.sleep(0.5)
        return 0
    finally:
        print("stopping ...")
        sup.stop()
        if redis_proc:
            redis_proc.stop()
        print("stopped")


def _banner(api: str, s, flower_password: str | None, var: Path) -> None:
    print(f"api      {api}   (OpenAPI docs at {api}/docs, metrics at {api}/metrics)")
    if flower_password:
        print(f"flower   http://{s.api_host}:{s.flower_port}   user admin, password {flower_password} (generated)")
    print(f"logs     {var / 'logs'}")
    cluster = f"http://{s.scaler_metrics_host}:{s.scaler_metrics_port}"
    print(f"metrics  cluster {cluster}/metrics, workers at {cluster}/targets (deploy/prometheus/prometheus.yml)")
    print("try it:")
    x = ", ".join(["0.5"] * 20)
    print(f"  curl -s -X POST {api}/predict -H 'content-type: application/json' -d '{{\"X\": [{x}]}}'")
    print("Ctrl-C stops everything.")
    sys.stdout.flush()
