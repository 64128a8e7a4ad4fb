"""Starting the systems a benchmark measures: inferpool through `inferpool up`, and the reference servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli.local_redis import free_port

READY_TIMEOUT_S = 90.0


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class System:
    """A running system under test: its base URL and the pid at the root of its process tree."""

    name: str
    url: str
    pid: int


def _flower_ready(port: str, proc: subprocess.Popen, log: Path) -> None:
    # /healthcheck is open even behind basic auth; answering it means Flower is up and serving.
    _wait(f"http://127.0.0.1:{port}/healthcheck", proc, log)


@contextmanager
def inferpool_system(var_dir: Path, model_dir: Path, scaler: bool = False, flower: bool = False, **env: str):
    """`inferpool up` on free ports with a private Redis; yields a System whose pid is `inferpool up`'s.

    With ``flower`` it starts Flower as a user's `inferpool up` does (credentials generated when
    INFERPOOL_FLOWER_USER/PASSWORD are unset) and waits until Flower answers too.
    """
    port = free_port()
    var_dir.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    child_env.update(
        INFERPOOL_API_PORT=str(port),
        INFERPOOL_MODEL_DIR=str(model_dir),
        INFERPOOL_FLOWER_PORT=str(free_port()),
        INFERPOOL_WORKER_METRICS_PORT=str(free_port()),
        INFERPOOL_SCALER_METRICS_PORT=str(free_port()),
        # The peers check no key either; a key check is one dict lookup, and wrk's script sends none.
        INFERPOOL_AUTH="off",
        **env,
    )
    argv = [sys.executable, "-m", "cli.main", "up", "--var-dir", str(var_dir)]
    if not flower:
        argv.append("--no-flower")
    if not scaler:
        argv.append("--no-scaler")
    log = var_dir / "up.log"
    proc = subprocess.Popen(argv, env=child_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/readyz", proc, log)
        if flower:
            _flower_ready(child_env["INFERPOOL_FLOWER_PORT"], proc, log)
        yield System("inferpool", url, proc.pid)
    finally:
        _stop(proc)


@contextmanager
def inferpool_stack(var_dir: Path, model_dir: Path, scaler: bool = False, **env: str):
    """`inferpool up` without Flower; yields the API base URL."""
    with inferpool_system(var_dir, model_dir, scaler=scaler, **env) as system:
        yield system.url


@contextmanager
def reference_server(model_dir: Path, log_dir: Path, runtime: str = "sklearn"):
    """`python -m bench.reference_server --runtime RUNTIME`: one process; yields a System."""
    port = free_port()
    log = log_dir / f"reference-{runtime}.log"
    argv = [
        sys.executable, "-m", "bench.reference_server", "--port", str(port), "--model-dir", str(model_dir),
        "--runtime", runtime,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/healthz", proc, log)
        yield System(f"{runtime} server", url, proc.pid)
    finally:
        _stop(proc)
