"""Micro-batching: the cost model, light requests beside heavy ones, and a worker dying mid-batch."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from api.batcher import CostModel
from inferpool import keys, model_store
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _queued(client, queue: str) -> int:
    return sum(client.llen(lst) for lst in keys.priority_lists(queue))


def _batch_running(client) -> bool:
    """A published batch has left its queue: a worker is running it (every batch here takes a second)."""
    return _queued(client, keys.QUEUE_ONLINE) < client.zcard(keys.INFLIGHT)


def test_cost_model_fits_linear_batch_time():
    cm = CostModel()
    for _ in range(200):
        for n in (1, 64, 512, 4096):
            cm.observe(n, 0.009 + 0.000005 * n)
    a, b = cm.coefficients()
    assert a == pytest.approx(0.000005, rel=0.05)
    assert b == pytest.approx(0.009, rel=0.05)
    # largest batch within a 30 ms budget: (0.030 - 0.009) / 0.000005 = 4200, capped
    assert cm.max_rows(0.030, 10_000) == pytest.approx(4200, rel=0.05)
    assert cm.max_rows(0.030, 256) == 256
    assert cm.max_rows(0.001, 256) == 1  # a budget below the fixed cost still sends one row


def test_light_requests_do_not_wait_behind_simulated_work(stack):
    """Heavy requests (work 400 ms) occupy the work pool; light requests sent meanwhile stay fast."""
    X = np.random.default_rng(0).normal(size=(20, 20)).tolist()
    with cf.ThreadPoolExecutor(8) as pool, httpx.Client(base_url=stack.url, timeout=30) as c:
        heavy = [pool.submit(c.post, "/predict", json={"X": X[i], "work": 400}) for i in range(6)]
        time.sleep(0.1)
        light = []
        for i in range(10):
            t = time.perf_counter()
            r = c.post("/predict", json={"X": X[i], "work": 0})
            light.append(time.perf_counter() - t)
            assert r.status_code == 200
        heavy_results = [h.result() for h in heavy]
    assert all(r.status_code == 200 for r in heavy_results)
    # Six 400 ms requests on a 2-process work pool take >= 1.2 s; light ones must not queue behind them.
    assert max(light) < 0.4, light


def _answer(client: httpx.Client, response: httpx.Response) -> int:
    """The caller's prediction: from the call, or (a 504 names the job) by polling the job it was given."""
    if response.status_code == 504:
        url = f"/v1/jobs/{response.json()['job_id']}"
        deadline = time.monotonic() + 60
        while (job := client.get(url).json())["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        return job["predictions"][0]
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


@pytest.mark.timeout(180)
def test_worker_dying_mid_batch_loses_no_answer(stack_factory, tmp_path, reference_model):
    """A prefork online worker's pool process is SIGKILLed while predicting: every caller still gets its own
    rows' answers."""
    from tests.support.slow_model import SlowModel

    X_train = np.random.default_rng(1).normal(size=(100, 20))
    model_dir = tmp_path / "slow-models"
    joblib.dump(SlowModel(reference_model, 1.5), tmp_path / "slow.joblib")
    model_store.register_model(tmp_path / "slow.joblib", X_train, reference_model.predict(X_train), model_dir)
    # A restart and three 1.5 s batches on one process can outlast the default 10 s wait on a loaded machine;
    # a caller whose call times out still gets a job id (504), which it follows below.
    env = {"INFERPOOL_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT), "INFERPOOL_PREDICT_TIMEOUT_S": "30"}
    st = stack_factory(**env)
    # The prefork online pool (INFERPOOL_ONLINE_POOL=prefork): its main process puts the message back at once.
    worker = st.start_worker("online", concurrency=1, INFERPOOL_ONLINE_POOL="prefork")
    st.start_api()
    X = np.random.default_rng(2).normal(size=(12, 20))
    with cf.ThreadPoolExecutor(12) as pool, httpx.Client(base_url=st.url, timeout=60) as c:
        futures = [pool.submit(c.post, "/v1/predict", json={"instances": [X[i].tolist()]}) for i in range(12)]
        wait_until(lambda: _batch_running(st.client), 20, "the worker to take a batch")
        time.sleep(0.3)  # the child is inside predict now
        children = worker.children()
        assert children, "prefork worker has no child process"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        answers = [_answer(c, f.result()) for f in futures]
    expected = reference_model.predict(X).tolist()
    assert answers == expected
    ledger = {k.decode(): int(v) for k, v in st.client.hgetall(keys.LEDGER).items()}
    assert ledger["accepted"] == ledger["succeeded"] == 12


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_killed_whole_mid_batch_is_answered_by_its_replacement(pool, stack_factory, tmp_path, reference_model):
    """The whole online worker (main process and pool, or its one process on threads) is SIGKILLed mid-batch,
    as an OOM kill or a lost host would: its replacement answers every caller, without waiting out the
    5-minute visibility timeout."""
    from tests.support.slow_model import SlowModel

    X_train = np.random.default_rng(1).normal(size=(100, 20))
    model_dir = tmp_path / "slow-models"
    joblib.dump(SlowModel(reference_model, 1.0), tmp_path / "slow.joblib")
    model_store.register_model(tmp_path / "slow.joblib", X_train, reference_model.predict(X_train), model_dir)
    env = {
        "INFERPOOL_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT), "INFERPOOL_PREDICT_TIMEOUT_S": "30",
        # The long re-dispatch pass would take 5 minutes: the answers can only come from the short one.
        "INFERPOOL_VISIBILITY_TIMEOUT_S": "300", "INFERPOOL_ONLINE_REDELIVERY_S": "2", "INFERPOOL_ONLINE_POOL": pool,
    }  # fmt: skip
    st = stack_factory(**env)
    worker = st.start_worker("online", concurrency=1, name="online-a@test")
    st.start_api()
    X = np.random.default_rng(3).normal(size=(6, 20))
    with cf.ThreadPoolExecutor(6) as pool, httpx.Client(base_url=st.url, timeout=60) as c:
        futures = [pool.submit(c.post, "/v1/predict", json={"instances": [X[i].tolist()]}) for i in range(6)]
        wait_until(lambda: _batch_running(st.client), 20, "the worker to take a batch")
        time.sleep(0.3)  # the pool process is inside predict now
        for pid in [*worker.children(), worker.popen.pid]:
            os.kill(pid, signal.SIGKILL)
        worker.popen.wait()
        # The online worker keeps no unacked record: the dead worker's batch is on no queue and in no hash,
        # and only its spec (kept until it is answered) can bring it back.
        assert st.client.hlen(keys.UNACKED_HASH) == 0
        assert _queued(st.client, keys.QUEUE_ONLINE) < st.client.zcard(keys.INFLIGHT)
        st.start_worker("online", concurrency=1, name="online-b@test")  # what a supervisor does
        answers = [_answer(c, f.result()) for f in futures]
    assert answers == reference_model.predict(X).tolist()
    ledger = {k.decode(): int(v) for k, v in st.client.hgetall(keys.LEDGER).items()}
    assert ledger["accepted"] == ledger["succeeded"] == 6
