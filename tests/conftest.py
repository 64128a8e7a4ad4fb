"""Real parts for tests: a private redis-server, real Celery worker processes, a real uvicorn API.

Nothing here talks to the machine's own Redis on 6379: every session starts its
own server on a free port in a temp directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from cli.local_redis import LocalRedis, free_port
from inferpool import keys, model_store

START_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    model_store.train_reference(d)
    return d


@pytest.fixture(scope="session")
def reference_model(model_dir):
    model, _ = model_store.load_model(model_dir)
    return model


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[LocalRedis]:
    srv = LocalRedis(tmp_path_factory.mktemp("redis"), aof=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_redis(tmp_path) -> Iterator[LocalRedis]:
    """A Redis of this test's own, for tests that kill or restart it."""
    srv = LocalRedis(tmp_path / "redis", aof=True).start()
    yield srv
    srv.stop(kill=True)


def base_env(redis_url: str, model_dir: Path, metrics_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERPOOL_")}
    env.update(
        REDIS_URL=redis_url,
        INFERPOOL_MODEL_DIR=str(model_dir),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        INFERPOOL_LOG_LEVEL="WARNING",
        # One API process per test stack: what a test asserts of one process holds for each of several, and
        # tests/cli/test_api_processes.py runs several. `inferpool up` in the end-to-end tests runs the default.
        INFERPOOL_API_PROCESSES="1",
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


@dataclass
class Stack:
    """A running inferpool: Redis, workers and (optionally) the API, all real processes."""

    redis: LocalRedis
    env: dict[str, str]
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    url: str = ""

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        popen = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *argv],
            env=env or self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, role: str = "all", concurrency: int = 2, name: str | None = None, **env: str) -> Proc:
        node = name or f"{role}-{len(self.procs)}@test"
        argv = ["worker", "--role", role, "-c", str(concurrency), "--name", node]
        proc = self._spawn(f"worker-{role}", argv, {**self.env, **env} if env else None)
        proc.node = node  # type: ignore[attr-defined]
        self.wait_for_worker(node, proc)
        return proc

    def wait_for_worker(self, node: str, proc: Proc) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker exited: {proc.log.read_text()[-2000:]}")
            if client.zscore(keys.WORKERS, node):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {node} did not start: {proc.log.read_text()[-2000:]}")

    def start_api(self, **env: str) -> str:
        port = free_port()
        proc = self._spawn("api", ["api", "--port", str(port)], {**self.env, **env} if env else None)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"api exited: {proc.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    self.url = url
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("api did not start")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def stack_factory(tmp_path, model_dir) -> Iterator[Callable[..., Stack]]:
    """Build a stack on its own Redis; tests that kill, restart or starve things use this."""
    made: list[tuple[Stack, LocalRedis]] = []

    def make(**env: str) -> Stack:
        d = tmp_path / f"stack{len(made)}"
        (d / "metrics").mkdir(parents=True)
        srv = LocalRedis(d / "redis", aof=True).start()
        st = Stack(redis=srv, env=base_env(srv.url, model_dir, d / "metrics", **env), tmp=d)
        made.append((st, srv))
        return st

    yield make
    for st, srv in made:
        st.stop()
        srv.stop(kill=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, model_dir, redis_server) -> Iterator[Stack]:
    """A shared stack for tests that only send traffic: one worker for each role, and the API."""
    d = tmp_path_factory.mktemp("stack")
    (d / "metrics").mkdir()
    st = Stack(redis=redis_server, env=base_env(redis_server.url, model_dir, d / "metrics"), tmp=d)
    st.start_worker("online", concurrency=2)
    st.start_worker("work", concurrency=2)
    st.start_api()
    yield st
    st.stop()


@pytest.fixture(scope="session")
def api(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c
