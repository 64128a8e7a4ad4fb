"""Chaos, bounded and on loopback: kill workers mid-chunk, restart Redis, cut it off, stop the scaler,
all under steady load; then drain and check that nothing accepted was lost, every row came back
once and in order, and the ledger balances (accepted = succeeded + failed; duplicates counted).

Delivery is sped up for the test: messages of a dead worker come back after 8 s
(INFERPOOL_VISIBILITY_TIMEOUT_S), as do messages lost outright (the re-dispatcher looks for work with no
progress for that long), so tasks must end within 7 s (INFERPOOL_TASK_TIME_LIMIT_S; the soft
limit, 5 s, leaves room for a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from inferpool import keys, queues
from inferpool.settings import Settings
from tests.support.jobs import wait_job
from workers.app import make_app

N_FEATURES = 20
CHUNK_ROWS = 500
FAST_DELIVERY = {
    "INFERPOOL_VISIBILITY_TIMEOUT_S": "8",
    "INFERPOOL_TASK_TIME_LIMIT_S": "7",
    "INFERPOOL_RESTORE_INTERVAL_S": "1",
    # Lost messages (kombu's BRPOP window at a Redis restart) are looked for every second.
    "INFERPOOL_REDISPATCH_INTERVAL_S": "1",
    "INFERPOOL_JOB_CHUNK_ROWS": str(CHUNK_ROWS),
}
REDIS_DOWN_ANSWER_MAX_S = 3.0


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def busy_children(app, node: str) -> list[int]:
    """Pids of the pool processes of ``node`` running a task right now (Celery remote control)."""
    active = app.control.inspect(destination=[node], timeout=1.0).active() or {}
    return [t["worker_pid"] for t in active.get(node, []) if t.get("worker_pid")]


def wait_busy_child(app, node: str, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = busy_children(app, node)
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"{node} ran no task within {timeout_s} s")


def kill_worker(proc) -> None:
    """The host is gone: pool children and main process SIGKILLed, nothing finishes, acks or requeues."""
    children = proc.children()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)


def ledger(st) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in st.client.hgetall(keys.LEDGER).items()}


@pytest.mark.slow  # a kill-and-recover run of 20-30 s: `make test-long`
@pytest.mark.timeout(150)
def test_job_survives_a_child_killed_mid_chunk_and_a_whole_worker_killed(stack_factory, reference_model):
    st = stack_factory(**FAST_DELIVERY)
    a = st.start_worker("work", concurrency=2, name="work-a@chaos")
    b = st.start_worker("work", concurrency=1, name="work-b@chaos")
    c = httpx.Client(base_url=st.start_api(), timeout=30)
    control = make_app(Settings(redis_url=st.redis.url))

    # A pool child dies mid-chunk: the parent sees it and requeues the message at once.
    X = rows(6 * CHUNK_ROWS, seed=1)
    job = c.post("/v1/jobs", json={"instances": X.tolist(), "work_ms": 1000}).json()["job_id"]
    os.kill(wait_busy_child(control, a.node), signal.SIGKILL)
    view = wait_job(c, job, timeout_s=30)
    assert view["status"] == "succeeded" and view["progress"] == {"rows_done": len(X), "rows_total": len(X)}
    assert view["predictions"] == reference_model.predict(X).tolist()  # every row once, in order

    # The whole worker dies mid-chunk: its message comes back after the visibility timeout.
    X2 = rows(4 * CHUNK_ROWS, seed=2)
    job2 = c.post("/v1/jobs", json={"instances": X2.tolist(), "work_ms": 1500}).json()["job_id"]
    wait_busy_child(control, b.node)
    kill_worker(b)
    killed_at = time.monotonic()
    view = wait_job(c, job2, timeout_s=40)
    recovered_s = time.monotonic() - killed_at
    assert view["status"] == "succeeded" and view["predictions"] == reference_model.predict(X2).tolist()
    assert recovered_s >= 5.0  # the held chunk waited for the 8 s visibility timeout, then ran on worker a
    led = ledger(st)
    assert led["accepted"] == 2 and led["succeeded"] == 2 and led.get("failed", 0) == 0, led
    assert led.get("redelivered", 0) >= 1, led


@dataclass
class Outcome:
    kind: str
    seed: int
    n: int
    status: int
    job_id: str | None = None
    predictions: list | None = None


@dataclass
class SteadyLoad:
    """A bounded background client: one request every ``interval_s``, four kinds in turn, at most ``max_requests``."""

    url: str
    interval_s: float = 0.1
    max_requests: int = 400
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    KINDS = (("predict", 2, 0), ("job", 3 * CHUNK_ROWS, 0), ("predict", 1, 100), ("job", 2 * CHUNK_ROWS, 150))

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as c:
            tasks = []
            for i in range(self.max_requests):
                if self._stop.is_set():
                    break
                tasks.append(asyncio.create_task(self._one(c, i)))
                await asyncio.sleep(self.interval_s)
            await asyncio.gather(*tasks)

    async def _one(self, c: httpx.AsyncClient, i: int) -> None:
        kind, n, work_ms = self.KINDS[i % len(self.KINDS)]
        X = rows(n, seed=1000 + i).tolist()
        path = "/v1/predict" if kind == "predict" else "/v1/jobs"
        try:
            r = await c.post(path, json={"instances": X, "work_ms": work_ms})
        except httpx.HTTPError:
            self.outcomes.append(Outcome(kind, 1000 + i, n, 0))
            return
        body = r.json() if "json" in r.headers.get("content-type", "") else {}  # problem+json carries a 504's job_id
        self.outcomes.append(Outcome(kind, 1000 + i, n, r.status_code, body.get("job_id"), body.get("predictions")))


def _timed(fn) -> tuple[int, float]:
    t = time.monotonic()
    try:
        code = fn().status_code
    except httpx.HTTPError:
        code = 0
    return code, time.monotonic() - t


@pytest.mark.slow  # `make test-long`
@pytest.mark.timeout(240)
def test_chaos_under_steady_load_loses_nothing(stack_factory, reference_model, capsys):
    st = stack_factory(**FAST_DELIVERY, INFERPOOL_PREDICT_MAX_WAIT_S="5")
    online = st.start_worker("online", concurrency=2, name="online@chaos")
    st.start_worker("work", concurrency=2, name="work-a@chaos")
    b = st.start_worker("work", concurrency=1, name="work-b@chaos")
    url = st.start_api()
    c = httpx.Client(base_url=url, timeout=15)
    control = make_app(Settings(redis_url=st.redis.url))
    scaler = st._spawn("scaler", ["scaler", "--actuator", "celery", "--min", "2", "--max", "4"])
    faults: list[str] = []
    load = SteadyLoad(url)
    load.start()
    try:
        time.sleep(3)
        wait_busy_child(control, online.node)
        kill_worker(online)  # main process and pool: nothing of it is left to put its message back
        faults.append("SIGKILL the online worker mid-task (its batches come back after the online redelivery)")
        online = st.start_worker("online", concurrency=2, name="online-2@chaos")
        time.sleep(3)
        kill_worker(b)
        faults.append("SIGKILL a whole work worker (children and main process)")
        st.start_worker("work", concurrency=1, name="work-c@chaos")
        time.sleep(2)
        st.redis.restart()
        faults.append("restart Redis (SIGTERM, AOF replayed)")
        time.sleep(3)
        scaler.stop()
        time.sleep(1)
        scaler = st._spawn("scaler", ["scaler", "--actuator", "celery", "--min", "2", "--max", "4"])
        faults.append("stop and start the scaler")
        time.sleep(2)

        st.redis.stop()
        faults.append("Redis unreachable for ~3 s")
        down = {
            "/v1/predict": _timed(lambda: c.post("/v1/predict", json={"instances": rows(1, 0).tolist()})),
            "/v1/jobs": _timed(lambda: c.post("/v1/jobs", json={"instances": rows(10, 0).tolist()})),
            "/readyz": _timed(lambda: c.get("/readyz")),
            "/v1/jobs/{id}": _timed(lambda: c.get("/v1/jobs/" + "0" * 40)),
        }
        time.sleep(max(0.0, 3 - sum(d for _, d in down.values())))
        st.redis.start()
        back_at = time.monotonic()
        recovered_s = None
        while time.monotonic() - back_at < 30:
            if _timed(lambda: c.post("/v1/predict", json={"instances": rows(1, 0).tolist()}))[0] == 200:
                recovered_s = time.monotonic() - back_at
                break
            time.sleep(0.2)
        time.sleep(3)
    finally:
        load.stop()

    for route, (code, seconds) in down.items():
        assert code == 503 and seconds < REDIS_DOWN_ANSWER_MAX_S, (route, code, seconds)
    assert recovered_s is not None, "the API did not recover by itself once Redis was back"

    # Drain: every accepted job (and every predict answered 504) must end, and the ledger balance.
    outcomes = load.outcomes
    codes = Counter(o.status for o in outcomes)
    assert set(codes) <= {200, 202, 429, 503, 504}, codes  # no 500, no dropped connection
    pending = [o for o in outcomes if o.status in (202, 504)]
    views = {o.job_id: wait_job(c, o.job_id, timeout_s=60) for o in pending}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        led, snap = ledger(st), queues.snapshot(st.client)
        if led["accepted"] == led.get("succeeded", 0) + led.get("failed", 0) and not (snap.depth or snap.unacked):
            break
        time.sleep(0.2)

    lost = [o.job_id for o in pending if views[o.job_id]["status"] != "succeeded"]
    wrong = 0
    for o in outcomes:
        if o.status not in (200, 202, 504):
            continue
        expected = reference_model.predict(rows(o.n, o.seed)).tolist()
        got = o.predictions if o.status == 200 else views[o.job_id]["predictions"]
        wrong += got != expected
    figures = {
        "faults_injected": len(faults),
        "faults": faults,
        "requests": len(outcomes),
        "status_codes": dict(sorted(codes.items())),
        "jobs_accepted": sum(o.status == 202 for o in outcomes),
        "predicts_answered": codes[200],
        "predicts_timed_out_then_polled": codes[504],
        "lost": len(lost),
        "wrong_or_out_of_order": wrong,
        "ledger": led,
        "redis_down_answers_s": {k: round(v[1], 3) for k, v in down.items()},
        "recovered_after_redis_back_s": round(recovered_s, 2),
    }
    with capsys.disabled():
        print("\nchaos figures:", json.dumps(figures))
    (st.tmp / "chaos-figures.json").write_text(json.dumps(figures, indent=2))

    assert not lost and wrong == 0, figures
    assert led["accepted"] == led.get("succeeded", 0) + led.get("failed", 0), figures
    assert led.get("failed", 0) == 0, figures
    assert figures["jobs_accepted"] >= 20 and codes[200] >= 20, figures  # the load really ran through it all
