"""The scaler on real workers: a load step grows the pool, its end shrinks it to the minimum, nothing is lost.

Pool sizes are read the way an operator would, from ``inspect().stats()[w]['pool']['processes']``.
Windows and cooldowns are shortened through the environment so each test takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
import redis
from conftest import base_env

from cli.local_redis import free_port
from inferpool import keys
from inferpool.settings import get_settings
from scaler.actuators import PoolActuator, ProcessActuator, launch_worker
from scaler.load_signal import SignalReader, WorkerView
from tests.support.waiting import wait_until
from workers.app import make_app

N_FEATURES = 20
BASE = "work-1@test"


def control_app(st):
    return make_app(get_settings().model_copy(update={"redis_url": st.redis.url}))


def pool_sizes(app, nodes: list[str]) -> dict[str, int]:
    stats = app.control.inspect(destination=nodes, timeout=2).stats() or {}
    return {n: len(s["pool"]["processes"]) for n, s in stats.items()}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    wait_until(check, timeout_s, what, every=0.25)


class Load:
    """Threads posting one-row /v1/predict requests with simulated work; records every answer."""

    def __init__(self, url: str, model) -> None:
        self.url, self.model = url, model
        self.lock = threading.Lock()
        self.answers = 0
        self.failures: list[str] = []

    def one(self, c: httpx.Client, rng: np.random.Generator, work_ms: int) -> None:
        x = rng.normal(size=(1, N_FEATURES))
        r = c.post("/v1/predict", json={"instances": x.tolist(), "work_ms": work_ms})
        ok = r.status_code == 200 and r.json()["predictions"] == self.model.predict(x).tolist()
        with self.lock:
            self.answers += 1
            if not ok:
                self.failures.append(f"{r.status_code} {r.text[:200]}")

    def clients(self, n: int, work_ms: int, stop: threading.Event, pause_s: float = 0.0) -> list[threading.Thread]:
        def run(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=self.url, timeout=30) as c:
                while not stop.is_set():
                    self.one(c, rng, work_ms)
                    stop.wait(pause_s)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        return threads


def ledger_settles(client) -> dict[str, int]:
    def settled() -> bool:
        led = {k.decode(): int(v) for k, v in client.hgetall(keys.LEDGER).items()}
        return led.get("accepted", 0) == led.get("succeeded", 0) + led.get("failed", 0)

    wait_for("the ledger to settle", settled, 10)
    return {k.decode(): int(v) for k, v in client.hgetall(keys.LEDGER).items()}


@pytest.mark.slow  # `make test-long`
def test_load_step_grows_the_pool_and_its_end_shrinks_it_to_min_without_losing_a_task(stack_factory, reference_model):
    metrics_port = free_port()
    st = stack_factory(
        INFERPOOL_WORK_CONCURRENCY_MIN="1",
        INFERPOOL_WORK_CONCURRENCY_MAX="4",
        INFERPOOL_SCALER_WORKER_MAX_PROCS="4",
        # 300 ms tasks: a 1 s target lets one process serve the trickle below, so the pool can reach min
        INFERPOOL_SCALER_WAIT_TARGET_S="1.0",
        INFERPOOL_SCALER_SCALE_DOWN_WINDOW_S="3",
        INFERPOOL_SCALER_COOLDOWN_S="1",
        INFERPOOL_SCALER_TICK_S="0.5",
        INFERPOOL_SCALER_METRICS_PORT=str(metrics_port),
        INFERPOOL_PREDICT_MAX_WAIT_S="60",  # this test wants every request answered, not shed with 429
    )
    st.start_worker("online", concurrency=1)
    work = st.start_worker("work", concurrency=1, name=BASE)
    url = st.start_api()
    scaler = st._spawn("scaler", ["scaler"], {**st.env, "INFERPOOL_LOG_LEVEL": "INFO"})  # decisions in its log
    app, client = control_app(st), st.client
    wait_for("the scaler's first tick", lambda: client.exists(keys.SCALER_HEALTH), 20)
    assert pool_sizes(app, [BASE]) == {BASE: 1}

    load = Load(url, reference_model)
    burst, trickle = threading.Event(), threading.Event()
    threads = load.clients(12, 300, burst)  # 12 closed-loop clients: ~12 s of work queued per second of one process
    try:
        wait_for("the pool to grow", lambda: pool_sizes(app, [BASE]).get(BASE, 0) >= 3, 25)
        burst.wait(2.0)  # a little longer at the grown size
        burst.set()
        # the load ends but for a trickle one process can serve: shrinking happens while tasks still run
        threads += load.clients(1, 300, trickle, pause_s=1.0)
        wait_for("the pool to shrink to min", lambda: pool_sizes(app, [BASE]).get(BASE) == 1, 45)
    finally:
        burst.set()
        trickle.set()
        for t in threads:
            t.join(35)

    assert load.failures == [] and load.answers >= 30
    led = ledger_settles(client)
    assert led["accepted"] == led["succeeded"] >= load.answers and led.get("failed", 0) == 0
    assert led.get("redelivered", 0) == 0 and led.get("duplicates", 0) == 0  # no task ran twice
    decisions = [orjson.loads(d) for d in client.lrange(keys.SCALER_DECISIONS, 0, -1)]
    ups = [d for d in decisions if d["direction"] == "up"]
    downs = [d for d in decisions if d["direction"] == "down"]
    assert ups and downs and all(d["reason"] == "stabilised_down" for d in downs)
    assert all(d["to"] == d["from"] - 1 for d in downs)  # one step at a time
    assert int(client.hget(keys.SCALER_STATE, "desired")) == 1
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'inferpool_scaler_decisions_total{direction="down",reason="stabilised_down"}' in text
    assert "inferpool_scaler_arrivals_per_second" in text
    assert "WorkerLostError" not in work.log.read_text()
    scaler.stop()
    assert scaler.popen.returncode == 0


def test_a_shrink_never_stops_a_busy_process_it_waits_for_one_to_be_idle(stack_factory, reference_model):
    st = stack_factory()
    st.start_worker("online", concurrency=1)
    st.start_worker("work", concurrency=2, name=BASE)
    url = st.start_api()
    app, reader = control_app(st), SignalReader(st.client, keys.QUEUE_WORK, "work")
    pool = PoolActuator(app.control, worker_max_procs=4)
    load = Load(url, reference_model)
    rng = np.random.default_rng(1)
    with ThreadPoolExecutor(2) as ex, httpx.Client(base_url=url, timeout=30) as c:
        running = [ex.submit(load.one, c, rng, 2500) for _ in range(2)]
        wait_for("both processes busy", lambda: sum(w.busy for w in reader.read().workers) == 2, 10)
        out = pool.apply(1, reader.read().workers, "test")
        assert (out.changed, out.complete) == (0, False)  # "All processes busy": nothing stopped
        assert pool_sizes(app, [BASE]) == {BASE: 2}
        for f in running:
            f.result()
    assert load.failures == [] and load.answers == 2
    wait_for("idle processes", lambda: sum(w.busy for w in reader.read().workers) == 0, 10)
    out = pool.apply(1, reader.read().workers, "test")
    assert (out.changed, out.complete) == (-1, True)
    wait_for("one process left", lambda: pool_sizes(app, [BASE]) == {BASE: 1}, 10)


@pytest.mark.slow  # a kill-and-recover run of 20-30 s: `make test-long`
def test_process_actuator_starts_a_worker_past_the_pool_cap_and_stops_it_gracefully(stack_factory, reference_model):
    st = stack_factory()
    st.start_worker("online", concurrency=1)
    st.start_worker("work", concurrency=1, name=BASE)
    url = st.start_api()
    app, reader = control_app(st), SignalReader(st.client, keys.QUEUE_WORK, "work")
    started = "work-s1@test"

    def launch(name: str, n: int):
        return launch_worker(name, n, env=st.env, log=(st.tmp / f"{name}.log").open("wb"))

    act = ProcessActuator(PoolActuator(app.control, worker_max_procs=2), "test", "work", launch)
    load = Load(url, reference_model)
    try:
        out = act.apply(4, reader.read().workers, "test")  # base 1 -> 2, then a worker of 2
        assert (out.changed, list(act.started)) == (3, [started])

        def both_up() -> bool:
            names = {w.name: w.processes for w in reader.read().workers}
            return names.get(started) == 2

        wait_for("the started worker's heartbeat", both_up, 30)
        wait_for("4 processes", lambda: pool_sizes(app, [BASE, started]) == {BASE: 2, started: 2}, 10)
        assert act.apply(3, reader.read().workers, "test").changed == -1  # its own pool shrinks first
        wait_for("3 processes", lambda: pool_sizes(app, [BASE, started]) == {BASE: 2, started: 1}, 10)

        # every process busy, then the started worker is stopped: its running task still answers
        rng = np.random.default_rng(2)
        with ThreadPoolExecutor(4) as ex, httpx.Client(base_url=url, timeout=30) as c:
            running = [ex.submit(load.one, c, rng, 1500) for _ in range(4)]
            wait_for("busy processes", lambda: _busy(reader.read().workers, started) == 1, 10)
            out = act.apply(2, reader.read().workers, "test")
            assert (out.changed, out.complete) == (-1, True)
            for f in running:
                f.result()
        popen = act.started[started].popen
        popen.wait(20)
        assert popen.returncode == 0  # warm shutdown, not a kill
        assert load.failures == [] and load.answers == 4
        assert act.current(reader.read().workers) == 2
    finally:
        act.close()
    led = ledger_settles(st.client)
    assert led.get("redelivered", 0) == 0 and led["accepted"] == led["succeeded"]


def _busy(workers: tuple[WorkerView, ...], name: str) -> int:
    return next((w.busy for w in workers if w.name == name), 0)


def test_scaler_command_once_in_dry_run(fresh_redis, tmp_path, model_dir) -> None:
    """`inferpool scaler --once --dry-run`: one tick against Redis, recorded, nothing actuated, exit 0."""
    client = redis.Redis.from_url(fresh_redis.url)
    client.zadd(keys.WORKERS, {BASE: time.time()})
    client.hset(keys.worker(BASE), mapping={"processes": 1, "busy": 0, "queues": keys.QUEUE_WORK, "updated": 0})
    env = base_env(fresh_redis.url, model_dir, tmp_path, INFERPOOL_SCALER_METRICS_PORT=str(free_port()))
    env["INFERPOOL_LOG_LEVEL"] = "INFO"
    argv = [sys.executable, "-m", "cli.main", "scaler", "--once", "--dry-run", "--min", "2", "--max", "3"]
    # Beat like a live worker while the command starts: its import alone can outlast a heartbeat's 5 s
    # freshness on a loaded machine, and a stale worker would (rightly) not count.
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        client.zadd(keys.WORKERS, {BASE: time.time()})
        time.sleep(0.5)
    _, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    assert "dry run" in stderr and "up 1 -> 2: at_min" in stderr
    state = client.hgetall(keys.SCALER_STATE)
    assert (state[b"actual"], state[b"dry_run"], state[b"actuator"]) == (b"1", b"1", b"celery")
