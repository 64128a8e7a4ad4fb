"""Monitoring on stacks of their own (workers killed and restarted): queue depth and age, unacked
messages and redelivery, per-worker series, drift gauges, and structured logs."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sklearn.datasets import make_classification

from inferpool import codec, keys
from inferpool.exporter import ClusterCollector
from inferpool.settings import Settings
from tests.support.monitoring import has, parse, scrape, value, worker_metrics_url
from tests.support.waiting import wait_until

N_FEATURES = 20
WORK = keys.QUEUE_WORK


def exposition(collector: ClusterCollector) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return parse(generate_latest(reg).decode())


def rows(n: int, seed: int = 0) -> list:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).tolist()


def kill_hard(proc) -> None:
    """SIGKILL the worker's main process, then its pool children: nothing gets acked or requeued."""
    children = proc.children()
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # a kill-and-recover run of 20-30 s: `make test-long`
@pytest.mark.timeout(150)
def test_queue_age_unacked_redelivery_and_worker_series(stack_factory, model_dir):
    """A worker dies holding a message; work piles up and ages; a new worker drains it and gets the lost
    message back flagged redelivered; the dead worker drops out of the series, a stopped one at once."""
    # Redelivery after 5 s, so tasks must end by 4 s (soft limit 2 s: the held task works 1.5 s).
    limits = {"visibility_timeout_s": 5, "task_time_limit_s": 4}
    env = {f"INFERPOOL_{k.upper()}": str(v) for k, v in limits.items()}
    st = stack_factory(**env, INFERPOOL_WORKER_METRICS_PORT="0")
    st.start_api()
    api = httpx.Client(base_url=st.url, timeout=30)
    collector = ClusterCollector(st.client, Settings(model_dir=model_dir, **limits), worker_gone_s=8)
    a = st.start_worker("work", concurrency=1, name="work-a@test")
    snap: dict = {}

    def look(check) -> bool:
        snap.clear()
        snap.update(exposition(collector))
        return check(snap)

    held = api.post("/v1/jobs", json={"instances": rows(10), "work_ms": 1500}).json()["job_id"]
    wait_until(lambda: look(lambda s: value(s, "inferpool_unacked_messages") == 1), 15, "the task to be taken")
    assert value(snap, "inferpool_worker_up", worker="work-a@test") == 1
    kill_hard(a)

    waiting = [api.post("/v1/jobs", json={"instances": rows(10, i), "work_ms": 50}).json()["job_id"] for i in (1, 2)]
    first = exposition(collector)
    time.sleep(1.0)
    second = exposition(collector)
    assert value(second, "inferpool_queue_messages", queue=WORK) == 2
    assert (
        value(second, "inferpool_queue_oldest_age_seconds", queue=WORK)
        >= value(first, "inferpool_queue_oldest_age_seconds", queue=WORK) + 0.8
    )
    assert value(second, "inferpool_unacked_messages") == 1
    assert value(second, "inferpool_unacked_oldest_age_seconds") > value(first, "inferpool_unacked_oldest_age_seconds")
    # The work queue has waited past the 2 s admission limit: requests for it are shed, and counted.
    wait_until(lambda: look(lambda s: value(s, "inferpool_queue_oldest_age_seconds", queue=WORK) > 2.2), 10, "age")
    assert api.post("/v1/predict", json={"instances": rows(1), "work_ms": 10}).status_code == 429
    shed = scrape(f"{st.url}/metrics")
    assert value(shed, "inferpool_requests_shed_total", route="/v1/predict", reason="wait") == 1
    wait_until(lambda: look(lambda s: value(s, "inferpool_worker_up", worker="work-a@test") == 0), 10, "a stale")
    assert value(snap, "inferpool_live_workers") == 0
    assert not has(snap, "inferpool_worker_pool_processes", worker="work-a@test")

    b = st.start_worker("work", concurrency=1, name="work-b@test")

    def drained(s: dict) -> bool:
        return value(s, "inferpool_queue_messages", queue=WORK) == 0 and value(s, "inferpool_unacked_messages") == 0

    wait_until(lambda: look(drained), 30, "the queue to drain and the lost message to come back")
    assert value(snap, "inferpool_queue_oldest_age_seconds", queue=WORK) == 0
    for job in [held, *waiting]:
        wait_until(lambda j=job: api.get(f"/v1/jobs/{j}").json()["status"] == "succeeded", 30, f"job {job}")
    ledger = exposition(collector)
    assert value(ledger, "inferpool_messages_redelivered_total") == 1
    assert value(ledger, "inferpool_ledger_in_flight_jobs") == 0
    assert value(ledger, "inferpool_ledger_duplicate_completions_total") == 0
    b_metrics = scrape(worker_metrics_url(st.client, "work-b@test"))
    assert value(b_metrics, "inferpool_tasks_redelivered_total", queue=WORK) == 1
    assert value(b_metrics, "inferpool_tasks_completed_total", queue=WORK, outcome="success") == 3

    wait_until(lambda: look(lambda s: not has(s, "inferpool_worker_up", worker="work-a@test")), 15, "a to go")
    assert value(snap, "inferpool_worker_up", worker="work-b@test") == 1
    b.stop()  # a clean stop removes the heartbeat at once
    after = exposition(collector)
    assert not has(after, "inferpool_worker_up", worker="work-b@test")
    assert value(after, "inferpool_live_workers") == 0


def _post_and_wait(api: httpx.Client, X: np.ndarray) -> None:
    job = api.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
    wait_until(lambda: api.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 30, "job")


@pytest.mark.timeout(120)
def test_drift_gauges_flip_for_shifted_features_only(stack_factory, model_dir):
    """Rows from the training distribution: stable. The same with 12 of 20 features moved by 2 std:
    exactly those 12 drift and the dataset verdict flips."""
    # No shared evaluation: each read must see the window as it is now, not as it was up to 5 s ago.
    st = stack_factory(
        INFERPOOL_DRIFT_SAMPLE_RATE="1.0", INFERPOOL_WORKER_METRICS_PORT="0", INFERPOOL_DRIFT_CACHE_S="0"
    )
    st.start_api()
    st.start_worker("online", concurrency=1)
    api = httpx.Client(base_url=st.url, timeout=30)
    collector = ClusterCollector(st.client, Settings(model_dir=model_dir, drift_cache_s=0))
    X, _ = make_classification(n_samples=500, n_features=N_FEATURES, random_state=42)  # the reference training set
    rng = np.random.default_rng(3)
    W = X[rng.integers(0, len(X), size=1200)]

    _post_and_wait(api, W)
    wait_until(lambda: st.client.llen(keys.DRIFT_SAMPLES) == 1200, 10, "the samples in the window")  # pushed each 0.5 s
    calm = exposition(collector)
    assert value(calm, "inferpool_drift_window_rows") == 1200
    assert value(calm, "inferpool_drift_dataset_drifted") == 0
    assert value(calm, "inferpool_drift_drifted_features") == 0
    for j in range(N_FEATURES):
        assert value(calm, "inferpool_drift_feature_verdict", feature=str(j), verdict="none") == 1
        assert value(calm, "inferpool_drift_feature_psi", feature=str(j)) < 0.1
    assert api.get("/v1/monitoring/drift").json()["status"] == "stable"

    st.client.delete(keys.DRIFT_SAMPLES, keys.DRIFT_CLASSES)
    shifted = list(range(12))
    S = W.copy()
    S[:, shifted] += 2 * X[:, shifted].std(axis=0)
    _post_and_wait(api, S)
    wait_until(lambda: st.client.llen(keys.DRIFT_SAMPLES) == 1200, 10, "the samples in the window")  # pushed each 0.5 s
    moved = exposition(collector)
    assert value(moved, "inferpool_drift_dataset_drifted") == 1
    assert value(moved, "inferpool_drift_drifted_features") == len(shifted)
    for j in range(N_FEATURES):
        v = "major" if j in shifted else "none"
        assert value(moved, "inferpool_drift_feature_verdict", feature=str(j), verdict=v) == 1, j
    assert api.get("/v1/monitoring/drift").json()["drifted"] is True


@pytest.mark.timeout(120)
def test_json_logs_carry_ids_and_never_rows(stack_factory):
    """Every worker log line is a JSON object (Celery's own records included); the per-task event names
    job, task, worker, model version and durations; the rows appear nowhere."""
    st = stack_factory(
        INFERPOOL_LOG_JSON="true", INFERPOOL_LOG_TASK_EVENTS="true", INFERPOOL_LOG_LEVEL="INFO",
        INFERPOOL_WORKER_METRICS_PORT="0",
    )  # fmt: skip
    st.start_api()
    w = st.start_worker("online", concurrency=1)
    api = httpx.Client(base_url=st.url, timeout=30)
    X = np.full((5, N_FEATURES), 0.123456789)
    job = api.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
    wait_until(lambda: api.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 30, "job")
    assert api.post("/v1/predict", json={"instances": X[:1].tolist()}).status_code == 200
    version = api.get("/v1/models").json()["version"]
    records: list[dict] = []

    def task_events() -> list[dict]:
        records[:] = [orjson.loads(line) for line in w.log.read_text().splitlines() if line.strip()]
        return [r for r in records if r["msg"].startswith("predict done")]

    wait_until(lambda: len(task_events()) >= 2, 10, "two task events")
    event = next(r for r in task_events() if r.get("job_id") == job)
    assert event["level"] == "info" and event["worker"] == w.node and event["model_version"] == version
    assert event["task_id"] and event["rows"] == 5 and event["queue"] == keys.QUEUE_BULK
    assert event["queue_wait_s"] >= 0 and event["run_s"] > 0
    assert any(r["logger"].startswith("celery") for r in records)  # Celery's records, same formatter
    # with task events on, Celery's own per-task lines are kept too
    assert any(r["logger"] == "celery.worker.strategy" and "received" in r["msg"] for r in records)
    assert all(r.get("worker") == w.node for r in records)
    text = w.log.read_text()
    assert "0.123456" not in text and codec.rows_to_b64(X[:1])[:16] not in text


@pytest.mark.timeout(120)
def test_by_default_a_worker_logs_no_line_per_task(stack_factory):
    """Under load, Celery's "received" and "succeeded" lines were thousands a minute and CPU on every task:
    by default (INFERPOOL_LOG_TASK_EVENTS unset) a worker that served requests logs neither, and still logs
    its start."""
    st = stack_factory(INFERPOOL_LOG_LEVEL="INFO", INFERPOOL_WORKER_METRICS_PORT="0")
    st.start_api()
    w = st.start_worker("all", concurrency=1)
    with httpx.Client(base_url=st.url, timeout=30) as api:
        for work in (0, 0, 5):
            r = api.post("/v1/predict", json={"instances": [[0.1] * N_FEATURES], "work_ms": work})
            assert r.status_code == 200, r.text
    w.stop()
    text = w.log.read_text()
    assert "ready." in text  # the worker logged at INFO
    assert "] received" not in text and "succeeded in" not in text and "predict done" not in text
