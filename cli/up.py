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
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli.local_redis import LocalRedis
from cli.processes import PROCESSES, ProcessSpec
from inferpool import model_store
from inferpool.settings import Settings, get_settings, parse_keys
from loadtest.client_auth import API_KEY_ENV

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
        argv = [sys.executable, "-m", "cli.main", *spec.argv[1:]]
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
    api_key = api_key_env(s, env)

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
        _banner(api, s, flower_password, api_key, var)
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


@dataclass(frozen=True)
class ApiKey:
    """What the banner says about keys: the secret to print (only a generated one) and how it came."""

    secret: str | None
    origin: str  # "generated", "configured" or "off"


def api_key_env(s: Settings, env: dict[str, str]) -> ApiKey:
    """Keys on by default: with none configured (and INFERPOOL_AUTH not off), generate one, as for Flower.

    The API gets it in INFERPOOL_API_KEYS (key id ``up``); clients started by ``--run`` (the load test of
    ``make demo``) and the curl line get it as INFERPOOL_API_KEY, the environment variable every client
    command reads (never argv, where ``ps`` would show it).
    """
    if s.auth == "off":
        return ApiKey(None, "off")
    configured = parse_keys(s.api_keys)
    if configured:
        env.setdefault(API_KEY_ENV, next(iter(configured)))  # for --run; the user knows their own keys
        return ApiKey(None, "configured")
    secret = f"ip-{secrets.token_urlsafe(24)}"
    env["INFERPOOL_API_KEYS"], env["INFERPOOL_AUTH"], env[API_KEY_ENV] = f"up:{secret}", "on", secret
    return ApiKey(secret, "generated")


def _banner(api: str, s, flower_password: str | None, api_key: ApiKey, var: Path) -> None:
    print(f"api      {api}   (OpenAPI docs at {api}/docs, metrics at {api}/metrics)")
    if api_key.origin == "generated":
        print(f"api key  {api_key.secret}   (generated, key id 'up'; clients read it from {API_KEY_ENV})")
    elif api_key.origin == "off":
        print("api key  none: INFERPOOL_AUTH=off, every data route is open")
    if flower_password:
        print(f"flower   http://{s.api_host}:{s.flower_port}   user admin, password {flower_password} (generated)")
    print(f"logs     {var / 'logs'}")
    cluster = f"http://{s.scaler_metrics_host}:{s.scaler_metrics_port}"
    print(f"metrics  cluster {cluster}/metrics, workers at {cluster}/targets (deploy/prometheus/prometheus.yml)")
    print("try it:")
    print(f"  {curl_example(api, api_key)}")
    print("Ctrl-C stops everything.")
    sys.stdout.flush()


def curl_example(api: str, api_key: ApiKey) -> str:
    x = ", ".join(["0.5"] * 20)
    key = {"generated": f" -H 'X-API-Key: {api_key.secret}'", "configured": " -H 'X-API-Key: <your key>'"}
    auth = key.get(api_key.origin, "")
    return f"curl -s -X POST {api}/predict -H 'content-type: application/json'{auth} -d '{{\"X\": [{x}]}}'"
