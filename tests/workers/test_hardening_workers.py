"""Issue 12, the worker side, on real processes: a worker serves only what it can, Redis refusing writes
puts messages back, specs are checked in the task, and Redis must be fit for a queue.

One stack for the module (a redis-server, a good worker serving every queue, the API); each test adds
the worker or the Redis condition it is about, and leaves the stack as it found it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from celery import Celery
from celery.app.control import Control

from cli.local_redis import LocalRedis, free_port
from inferpool import codec, keys, redis_fit
from inferpool.publish import task_message
from tests.conftest import START_TIMEOUT_S, Proc, Stack, base_env
from tests.support.jobs import wait_job
from tests.support.waiting import wait_until
from workers.redispatch import SweepLock

N_FEATURES = 20
GOOD = "good@hardening"
# Short delivery limits, so that a message left unacked comes back within seconds.
FAST = {
    "INFERPOOL_VISIBILITY_TIMEOUT_S": "5",
    "INFERPOOL_TASK_TIME_LIMIT_S": "4",
    "INFERPOOL_MODEL_RETRY_S": "1",
    "INFERPOOL_PREDICT_TIMEOUT_S": "5",
}


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def ledger(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.LEDGER).items()}


def heartbeat(client: redis.Redis, node: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.worker(node)).items()}


@pytest.fixture(scope="module")
def hstack(tmp_path_factory, model_dir) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("hardening")
    (d / "metrics").mkdir()
    srv = LocalRedis(d / "redis", aof=True).start()
    st = Stack(redis=srv, env=base_env(srv.url, model_dir, d / "metrics", **FAST), tmp=d)
    api = st._spawn("api", ["api", "--port", str(port := free_port())])  # starting while the worker starts
    st.start_worker("all", concurrency=2, name=GOOD)
    st.url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(st.url, api), START_TIMEOUT_S, "the API to start")
    yield st
    st.stop()
    srv.stop(kill=True)


def good_log(hstack: Stack) -> Path:
    return next(p for p in hstack.procs if getattr(p, "node", None) == GOOD).log


def _healthy(url: str, api: Proc) -> bool:
    assert api.popen.poll() is None, api.log.read_text()[-2000:]
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def hapi(hstack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hstack.url, timeout=30) as c:
        yield c


# --- 1. a worker serves only what it can -------------------------------------------------------------


@dataclass
class Load:
    """What the issue's reproduction sent: 40 one-call predictions and 5 jobs of 5,000 rows."""

    predict_status: list[int] = field(default_factory=list)
    predict_s: list[float] = field(default_factory=list)
    job_s: list[float] = field(default_factory=list)
    job_status: list[str] = field(default_factory=list)
    wrong: int = 0

    def summary(self) -> str:
        return (
            f"predict: {self.predict_status.count(200)}/{len(self.predict_status)} answered, "
            f"{self.predict_status.count(504)} x 504, max {max(self.predict_s):.2f} s; "
            f"jobs: {self.job_status.count('succeeded')}/{len(self.job_status)} succeeded, "
            f"slowest {max(self.job_s):.2f} s; wrong predictions {self.wrong}"
        )


def send_load(url: str, model, seed: int) -> Load:
    out = Load()
    singles = rows(40, seed)
    jobs = [rows(5000, seed + 1 + k) for k in range(5)]
    # Expected answers computed here, in this thread: scikit-learn warns when its predict runs in others.
    want_single = model.predict(singles).tolist()
    want_jobs = [model.predict(X).tolist() for X in jobs]

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            t0 = time.monotonic()
            body = {"instances": singles[i : i + 1].tolist(), "work_ms": 20 if i % 4 == 0 else 0}
            r = c.post("/v1/predict", json=body)
            out.predict_s.append(time.monotonic() - t0)
            out.predict_status.append(r.status_code)
            if r.status_code == 200 and r.json()["predictions"] != want_single[i : i + 1]:
                out.wrong += 1

    def job(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            t0 = time.monotonic()
            r = c.post("/v1/jobs", json={"instances": jobs[k].tolist()})
            assert r.status_code == 202, r.text
            view = wait_job(c, r.json()["job_id"], timeout_s=60)
            out.job_s.append(time.monotonic() - t0)
            out.job_status.append(view["status"])
            if view.get("predictions") != want_jobs[k]:
                out.wrong += 1

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(job, k) for k in range(len(jobs))] + [pool.submit(one, i) for i in range(40)]
        for f in futures:
            f.result()
    return out


def test_model_less_worker_takes_nothing_and_joins_once_its_model_loads(
    hstack, hapi, reference_model, model_dir, tmp_path
):
    client = hstack.client
    baseline = send_load(hstack.url, reference_model, seed=10)

    empty = tmp_path / "no-model"
    empty.mkdir()
    node = "empty@hardening"
    sick = hstack.start_worker("all", concurrency=2, name=node, INFERPOOL_MODEL_DIR=str(empty))
    wait_until(lambda: heartbeat(client, node).get("ready") == "0", 10, "the model-less worker's heartbeat")
    beat = heartbeat(client, node)
    assert beat["queues"] == "" and "ModelError" in beat["reason"], beat
    assert hapi.get("/readyz").json()["checks"]["workers"] == 1  # only the good worker counts

    before = ledger(client)
    with_sick = send_load(hstack.url, reference_model, seed=20)
    print(f"\n  good worker alone:          {baseline.summary()}")
    print(f"  beside a model-less worker: {with_sick.summary()}")
    assert with_sick.predict_status == [200] * 40, with_sick.summary()
    assert with_sick.job_status == ["succeeded"] * 5 and with_sick.wrong == 0, with_sick.summary()
    after = ledger(client)
    assert after.get("failed", 0) == before.get("failed", 0)
    assert after.get("redelivered", 0) == before.get("redelivered", 0)  # it never took a message

    # The model arrives: the worker checks it, adds its queues and counts as ready.
    for f in model_dir.iterdir():
        shutil.copy(f, empty / f.name)
    wait_until(lambda: heartbeat(client, node).get("ready") == "1", 15, "the worker to load its model")
    assert set(heartbeat(client, node)["queues"].split(",")) == set(keys.ALL_QUEUES)
    wait_until(lambda: hapi.get("/readyz").json()["checks"]["workers"] == 2, 5, "readiness to count it")
    sick.stop()


def broken_model_dir(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose compiled file is garbage with a matching sha256: the main process's check
    (manifest, file, sha256) passes, and every pool process fails to build its session."""
    shutil.copytree(src, dst)
    version = (dst / "current").read_text().strip()
    manifest_path = dst / f"{version}.json"
    manifest = json.loads(manifest_path.read_text())
    garbage = b"not an onnx model"
    (dst / manifest["runtime"]["file"]).write_bytes(garbage)
    manifest["runtime"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    return dst


@pytest.fixture
def control(hstack: Stack) -> Iterator[Control]:
    app = Celery(broker=hstack.redis.url)
    yield app.control
    app.close()


def test_worker_whose_processes_cannot_load_puts_the_message_back_and_stops_consuming(
    hstack, hapi, control, reference_model, model_dir, tmp_path
):
    client = hstack.client
    node = "broken@hardening"
    broken = hstack.start_worker(
        "all", concurrency=1, name=node, INFERPOOL_MODEL_DIR=str(broken_model_dir(model_dir, tmp_path / "m"))
    )
    assert heartbeat(client, node).get("ready") == "1"  # its main process's check passed
    # Only the broken worker consumes bulk now: the job's message must reach it.
    control.cancel_consumer(keys.QUEUE_BULK, destination=[GOOD], reply=True)
    try:
        before = ledger(client)
        X = rows(300, seed=30)
        job_id = hapi.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
        wait_until(lambda: heartbeat(client, node).get("ready") == "0", 15, "the broken worker to stop consuming")
        beat = heartbeat(client, node)
        assert beat["queues"] == "" and "model unavailable" in beat["reason"], beat
        assert hapi.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")  # not failed: back on its queue
    finally:
        control.add_consumer(keys.QUEUE_BULK, destination=[GOOD], reply=True)
    view = wait_job(hapi, job_id, timeout_s=30)
    assert view["status"] == "succeeded" and view["predictions"] == reference_model.predict(X).tolist()
    after = ledger(client)
    assert after.get("failed", 0) == before.get("failed", 0)
    assert after.get("redelivered", 0) > before.get("redelivered", 0)  # the good worker ran the requeued copy
    broken.stop()


# --- 2. Redis refusing writes (OOM under maxmemory, READONLY...) puts messages back ----------------------


def evalsha_failures(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("failed_calls", 0))


def submit_running(hapi: httpx.Client, client: redis.Redis, n: int, seed: int) -> list[str]:
    """Jobs of one row holding a work process 300 ms, each seen running (its message held, unacked)."""
    ids = [hapi.post("/v1/jobs", json={"instances": rows(1, seed + k).tolist(), "work_ms": 300}).json()["job_id"]
           for k in range(n)]  # fmt: skip
    wait_until(
        lambda: all(client.hget(keys.job(j), "status") == b"running" for j in ids), 10, "the jobs to start", 0.01
    )
    # The worker writes its unacked record (and deletes acked messages from it) a moment later
    # (workers.unacked_record): wait until it holds these jobs' messages and nothing else.
    chunks = {keys.chunk_task_id(j, 0) for j in ids}
    wait_until(lambda: held_task_ids(client) == chunks, 5, "the record to hold exactly these messages", 0.01)
    return ids


def held_task_ids(client: redis.Redis) -> set[str]:
    return {orjson.loads(v)[0]["properties"]["correlation_id"] for v in client.hvals(keys.UNACKED_HASH)}


def test_tasks_wait_out_a_full_redis_and_requeue_past_their_patience(hstack, hapi):
    client = hstack.client
    log = good_log(hstack)
    before = ledger(client)
    try:
        # A refusal that passes while the task is patient: it writes once memory is freed, no second run.
        # (A job run first has Redis load every script: a NOSCRIPT reply counts as a failed EVALSHA too.)
        assert wait_job(hapi, submit_running(hapi, client, 1, seed=39)[0])["status"] == "succeeded"
        refused = evalsha_failures(client)
        (job,) = submit_running(hapi, client, 1, seed=40)
        client.config_set("maxmemory", 1)
        wait_until(lambda: evalsha_failures(client) > refused, 5, "the finishing script to be refused", 0.01)
        client.config_set("maxmemory", 0)
        assert wait_job(hapi, job, timeout_s=20)["status"] == "succeeded"
        now = ledger(client)
        for second_run in ("redelivered", "redispatched"):  # nor sent again as a lost message
            assert now.get(second_run, 0) == before.get(second_run, 0), now

        # Refused past the task's patience, requeue included: both messages stay unacked and come back after
        # the visibility timeout, and the worker (two processes) still has both its slots to run them.
        jobs = submit_running(hapi, client, 2, seed=41)
        client.config_set("maxmemory", 1)
        wait_until(lambda: log.read_text().count("Redis refused the requeue") >= 2, 10, "both requeues refused")
    finally:
        client.config_set("maxmemory", 0)
    assert [wait_job(hapi, j, timeout_s=30)["status"] for j in jobs] == ["succeeded"] * 2
    after = ledger(client)
    assert after.get("failed", 0) == before.get("failed", 0)
    assert after.get("redelivered", 0) == before.get("redelivered", 0) + 2
    assert after.get("redispatched", 0) == before.get("redispatched", 0)


# --- 3. specs checked in the task, no raw rows over the broker, an owned lock, a reply reader that survives --


def push_task(client: redis.Redis, spec: dict, queue: str) -> str:
    """A message as any broker client (Flower's send-task, say) can put on a queue."""
    task_id = uuid.uuid4().hex
    client.lpush(queue, task_message(task_id, spec, queue))
    return task_id


def test_a_spec_naming_keys_inferpool_never_writes_is_refused_with_nothing_written(hstack):
    client = hstack.client
    log = good_log(hstack)
    client.rpush("victim", "precious")  # somebody else's list, with no TTL
    row = codec.rows_to_b64(rows(1, seed=50))
    inline = {"n": 1, "rows": row, "work_ms": 0, "queue": keys.QUEUE_ONLINE, "reqs": 0}
    evil = [
        {**inline, "id": uuid.uuid4().hex, "reply": "victim"},  # push to and expire any list
        {**inline, "id": "x:spec", "reply": keys.reply_list("abc")},  # a result key landing on another's key
        {"id": "j:0", "job": "../victim", "chunk": 0, "n": 1, "work_ms": 0, "queue": keys.QUEUE_BULK},
        {**inline, "id": uuid.uuid4().hex, "work_ms": True},
    ]
    refused = log.read_text().count("refused task")
    for spec in evil:
        push_task(client, spec, spec["queue"])
    wait_until(lambda: log.read_text().count("refused task") - refused == len(evil), 10, "every message refused")
    wait_until(lambda: client.hlen(keys.UNACKED_HASH) == 0, 5, "the messages acked, not left to come back")
    assert client.lrange("victim", 0, -1) == [b"precious"] and client.ttl("victim") == -1
    written = [keys.batch_result(spec["id"]) for spec in evil] + client.keys(f"{keys.PREFIX}:job:*victim*")
    assert not any(client.exists(k) for k in written)
    assert "precious" not in log.read_text() and row not in log.read_text()


def test_query_task_shows_sizes_never_rows(hstack, control):
    row = codec.rows_to_b64(rows(1, seed=51))
    spec = {"id": uuid.uuid4().hex, "n": 1, "rows": row, "work_ms": 1500, "queue": keys.QUEUE_WORK, "reqs": 0}
    task_id = push_task(hstack.client, spec, keys.QUEUE_WORK)
    found: dict = {}

    def running() -> bool:
        found.update((control.inspect(destination=[GOOD], timeout=1).query_task(task_id) or {}).get(GOOD, {}))
        return found.get(task_id, ("",))[0] == "active"

    wait_until(running, 10, "the task to be reported running")
    state, info = found[task_id]
    assert state == "active" and info["args"] == "(rows=1, work_ms=1500)", info
    assert row not in json.dumps(found)


def test_the_redispatch_lock_is_released_by_its_holder_only(hstack):
    a, b = SweepLock(hstack.client, "a@host"), SweepLock(hstack.client, "b@host")
    try:
        assert a.acquire() and not b.acquire()
        assert not b.release() and hstack.client.get(keys.REDISPATCH_LOCK) == a.token.encode()
        assert a.release() and hstack.client.get(keys.REDISPATCH_LOCK) is None
        assert b.acquire()  # free as soon as its holder is done, not when a TTL runs out
    finally:
        b.release()


def reply_list_of_api(client: redis.Redis, timeout_s: float = 10) -> str:
    """The API's reply list, seen in its BLPOP (every second) through MONITOR."""
    deadline = time.monotonic() + timeout_s
    with client.monitor() as m:
        for cmd in m.listen():
            words = cmd["command"].split()
            if words[0] == "BLPOP" and words[1].startswith(keys.reply_list("")):
                return words[1]
            assert time.monotonic() < deadline, "no BLPOP on a reply list seen"
    raise AssertionError("MONITOR ended")


def test_the_reply_reader_survives_replies_it_cannot_read(hstack, hapi, reference_model):
    client = hstack.client
    reply_key = reply_list_of_api(client)
    # A list where an object belongs, predictions that are no numbers, an id that is no string.
    client.rpush(reply_key, b"[1]", b'{"id": "t", "p": "x"}', b'{"id": ["t"], "p": [1]}')
    wait_until(lambda: client.llen(reply_key) == 0, 5, "the API to read the bad replies")
    X = rows(3, seed=52)
    for i in range(3):
        r = hapi.post("/v1/predict", json={"instances": X[i : i + 1].tolist()})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == reference_model.predict(X[i : i + 1]).tolist()
    assert "unreadable reply" in next(p for p in hstack.procs if p.name == "api").log.read_text()


# --- 4. Redis fit for a queue: no evicting policy, new work shed by bytes before Redis is full -----------


def test_api_and_workers_refuse_a_redis_that_may_evict(hstack, hapi):
    client = hstack.client
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        worker = hstack._spawn("worker-evicting", ["worker", "--role", "all", "-c", "1", "--name", "evict@hardening"])
        api = hstack._spawn("api-evicting", ["api", "--port", str(free_port())])
        for proc in (worker, api):
            proc.popen.wait(START_TIMEOUT_S)
            assert proc.popen.returncode != 0
            text = proc.log.read_text()
            assert "maxmemory-policy is 'allkeys-lru'" in text and "INFERPOOL_ALLOW_EVICTION" in text, text[-2000:]
        assert redis_fit.eviction_refusal("allkeys-lru", allow=True) is None  # said so on purpose: it runs
        # The running API re-reads the policy with its queue snapshot: no new work while Redis may evict it.
        r = hapi.post("/v1/jobs", json={"instances": rows(1, seed=60).tolist()})
        assert r.status_code == 503 and "maxmemory-policy" in r.json()["detail"], r.text
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        time.sleep(0.5)  # the API's queue snapshot (a quarter of a second old at most) sees it too


def test_new_work_is_shed_by_bytes_before_redis_is_full_and_accepted_work_finishes(hstack, hapi, reference_model):
    client = hstack.client
    X = rows(1, seed=61)
    accepted = hapi.post("/v1/jobs", json={"instances": X.tolist(), "work_ms": 1000})
    assert accepted.status_code == 202
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", int(used / 0.9))  # ~90 % full: over the 80 % share, with room to finish
    try:
        time.sleep(0.5)
        for route, body in (("/v1/jobs", {"instances": X.tolist()}), ("/v1/predict", {"instances": X.tolist()})):
            r = hapi.post(route, json=body)
            assert r.status_code == 429 and r.headers["retry-after"], r.text
            assert "maxmemory" in r.json()["detail"]
        view = wait_job(hapi, accepted.json()["job_id"], timeout_s=20)
        assert view["status"] == "succeeded" and view["predictions"] == reference_model.predict(X).tolist()
    finally:
        client.config_set("maxmemory", 0)
    time.sleep(0.5)
    assert hapi.post("/v1/predict", json={"instances": X.tolist()}).status_code == 200


def test_a_job_that_would_fill_redis_is_refused_before_its_rows_are_stored(hstack, hapi):
    """A job body whose size would take Redis past its memory share is shed at once; a small one is not."""
    client = hstack.client
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", int(used / 0.7))  # ~70 % full: under the 80 % share, ~14 % of it to spare
    try:
        time.sleep(0.5)
        big = rows(int(used * 0.2 / 160) + 1, seed=62)  # as JSON ~20 % of used memory, as float32 rows ~ half
        r = hapi.post("/v1/jobs", json={"instances": big.tolist()})
        assert r.status_code == 429 and "maxmemory" in r.json()["detail"], r.text
        assert hapi.post("/v1/jobs", json={"instances": rows(2, seed=63).tolist()}).status_code == 202
    finally:
        client.config_set("maxmemory", 0)
