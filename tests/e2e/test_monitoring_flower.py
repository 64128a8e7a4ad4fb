"""Flower on the shared stack: basic auth always, our workers listed, and no row of request data in
its task list or in what workers report about running tasks."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from celery import Celery

from cli.local_redis import free_port
from inferpool import codec, keys
from inferpool.celery_config import celery_config
from tests.support.waiting import wait_until

USER, PASSWORD = "ops", "flower-test-pw"
N_FEATURES = 20
MARK = 0.987654321  # a row value that must never show up in Flower


@pytest.fixture(scope="module")
def flower(stack) -> Iterator[str]:
    port = free_port()
    env = {**stack.env, "INFERPOOL_FLOWER_USER": USER, "INFERPOOL_FLOWER_PASSWORD": PASSWORD}
    env.update(INFERPOOL_LOG_JSON="true", INFERPOOL_LOG_LEVEL="INFO")
    log = (stack.tmp / "flower.log").open("wb")
    cmd = [sys.executable, "-m", "cli.main", "flower", "--port", str(port), "--address", "127.0.0.1"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (stack.tmp / "flower.log").read_text()[-2000:]
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 30, "Flower to start")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_flower_refuses_to_start_without_credentials(stack):
    env = {k: v for k, v in stack.env.items() if not k.startswith("INFERPOOL_FLOWER_")}
    cmd = [sys.executable, "-m", "cli.main", "flower", "--port", str(free_port())]
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"INFERPOOL_FLOWER_PASSWORD" in r.stderr


def test_flower_needs_credentials_and_lists_our_workers(stack, flower):
    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
        assert httpx.get(f"{flower}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{flower}{path}", auth=(USER, "wrong"), timeout=10).status_code == 401, path
    # Flower 2.2 leaves these two open; they carry counts and names, no task arguments.
    assert httpx.get(f"{flower}/healthcheck", timeout=10).status_code == 200
    assert httpx.get(f"{flower}/metrics", timeout=10).status_code == 200
    nodes = {p.node for p in stack.procs if hasattr(p, "node")}
    seen: set[str] = set()

    def listed() -> bool:
        r = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=(USER, PASSWORD), timeout=15)
        assert r.status_code == 200
        seen.update(r.json())
        return nodes <= seen

    wait_until(listed, 20, f"Flower to list {nodes}", every=0.5)
    lines = [line for line in (stack.tmp / "flower.log").read_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # Flower's own log lines are JSON too
    assert any(r["process"] == "flower" and "Visit me at" in r["msg"] for r in records)


def _publish_slow_inline_task(stack, rows: np.ndarray) -> str:
    """An inline-rows task (as the API's micro-batcher sends) that stays running for 3 s."""
    from inferpool.settings import Settings

    app = Celery("inferpool-test")
    app.conf.update(celery_config(Settings(REDIS_URL=stack.redis.url)))
    task_id = uuid.uuid4().hex
    spec = {"id": task_id, "n": len(rows), "rows": codec.rows_to_b64(rows), "work_ms": 3000, "queue": keys.QUEUE_ONLINE}
    spec["reqs"] = 0  # no request behind it: the ledger stays balanced
    app.send_task(
        "inferpool.predict", args=[spec], task_id=task_id, queue=keys.QUEUE_ONLINE,
        headers={keys.ENQUEUED_HEADER: time.time()}, argsrepr=f"(rows={len(rows)}, work_ms=3000)", kwargsrepr="{}",
    )  # fmt: skip
    return task_id


def test_no_rows_in_flower_task_list_or_worker_inspection(stack, api, flower):
    rows = np.full((2, N_FEATURES), MARK)
    secrets = (str(MARK)[:8], codec.rows_to_b64(rows)[:24], codec.rows_to_b64(rows[:1])[:24])
    for _ in range(3):
        assert api.post("/v1/predict", json={"instances": rows[:1].tolist()}).status_code == 200
    task_id = _publish_slow_inline_task(stack, rows)
    node = next(p.node for p in stack.procs if getattr(p, "node", "").startswith("online"))
    auth = (USER, PASSWORD)
    active: list = []

    def running() -> bool:
        r = httpx.get(f"{flower}/api/workers", params={"refresh": "1", "workername": node}, auth=auth, timeout=15)
        text = r.text
        for s in secrets:
            assert s not in text, f"row data in Flower's view of {node}"
        active[:] = [t for t in r.json().get(node, {}).get("active", []) if t["id"] == task_id]
        return bool(active)

    wait_until(running, 10, "the slow task to show as active", every=0.3)
    assert active[0]["args"] == "(rows=2, work_ms=3000)"

    def listed() -> bool:
        r = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=15)
        assert r.status_code == 200
        for s in secrets:
            assert s not in r.text, "row data in Flower's task list"
        return task_id in r.json()

    wait_until(listed, 15, "the task in Flower's task list", every=0.5)
    tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=15).json()
    assert tasks[task_id]["args"] == "(rows=2, work_ms=3000)"
    assert all(t.get("args") is None or t["args"].startswith("(rows=") for t in tasks.values())


def test_flower_lists_work_and_bulk_tasks_but_not_micro_batches(api, flower):
    """Work and bulk tasks send one event each (their last) and show in Flower with name, sizes and outcome;
    online micro-batches send none."""
    auth = (USER, PASSWORD)
    row = np.full(N_FEATURES, 0.25).tolist()
    heavy = api.post("/v1/predict", json={"instances": [row], "work_ms": 20})
    light = api.post("/v1/predict", json={"instances": [row]})
    job = api.post("/v1/jobs", json={"instances": [row] * 3})
    assert (heavy.status_code, light.status_code, job.status_code) == (200, 200, 202)
    heavy_task, light_task = heavy.json()["job_id"].split(".")[0], light.json()["job_id"].split(".")[0]
    chunk_task = keys.chunk_task_id(job.json()["job_id"], 0)

    def listed() -> bool:
        tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=15).json()
        return all(tasks.get(t, {}).get("state") == "SUCCESS" for t in (heavy_task, chunk_task))

    wait_until(listed, 15, "the work task and the job chunk in Flower as SUCCESS", every=0.5)
    tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=15).json()
    assert tasks[heavy_task]["name"] == "inferpool.predict"
    assert tasks[heavy_task]["args"] == "(rows=1, work_ms=20)"
    assert tasks[chunk_task]["args"] == "(rows=3, work_ms=0)"
    assert light_task not in tasks
