"""Issue 12 at the API's edge, on real processes: strangers refused before the body, bodies parsed without
multiplying memory, one job per Idempotency-Key, TTLs that follow the work, keys on by default, quotas.

Timing is never asserted (the machine is shared): a refusal "before the body" is one that arrives while
no body byte has been sent. bench/hardening.py measures the figures.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from api import intake
from api.errors import problem_type
from inferpool import keys, model_store
from tests.support.jobs import wait_job
from tests.support.waiting import wait_until

N_FEATURES = 20
ALICE, BOB = "sk-alice-hardening-41c2", "sk-bob-hardening-9e07"
ROW = [0.5] * N_FEATURES
MB = 1024 * 1024


def extra_api(stack, **env: str) -> tuple[str, object]:
    """Another API process on the shared stack's Redis and workers; (url, its Proc)."""
    shared_url = stack.url
    url = stack.start_api(INFERPOOL_API_KEYS=f"alice:{ALICE},bob:{BOB}", **env)
    stack.url = shared_url  # start_api records the newest API; other tests keep using the shared one
    return url, stack.procs[-1]


@pytest.fixture(scope="module")
def keyed(stack) -> Iterator[str]:
    """An API process with keys, on the shared stack."""
    url, proc = extra_api(stack)
    yield url
    proc.stop()


@contextlib.contextmanager
def proc_stopped(proc) -> Iterator[None]:
    try:
        yield
    finally:
        proc.stop()


def client(url: str, key: str | None = ALICE) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key} if key else {})


def npy(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def raw_exchange(url: str, head: str) -> tuple[int, bytes]:
    """Send a request's line and headers, no body byte; (status, whole answer) once the API hangs up.

    An API that waited for the body would answer nothing: the socket's timeout fails the test.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split()[1]), answer


def headers_only(path: str, key: str | None, length: int | None) -> str:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    auth = f"x-api-key: {key}\r\n" if key is not None else ""
    return f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{framing}\r\n{auth}\r\n"


# --- 1. authenticate before reading the body; a limit per route -----------------------------------------
def test_a_stranger_is_refused_before_one_body_byte_is_read(keyed):
    for path in ("/v1/jobs", "/v1/predict", "/predict", "/v1/feedback"):
        for key, length in (("wrong-key", 100 * MB), (None, 100 * MB), ("wrong-key", None)):
            status, answer = raw_exchange(keyed, headers_only(path, key, length))
            assert status == 401, (path, key, answer[:300])
            assert b"connection: close" in answer.lower() and problem_type("unauthorized").encode() in answer
    with client(keyed) as c:  # and the API is still there for everyone else
        assert c.post("/v1/predict", json={"instances": [ROW]}).status_code == 200


def test_each_route_has_its_body_limit_refused_by_declared_length(keyed):
    """The one-call routes take kilobytes (1 MiB by default), jobs megabytes: refused before the body."""
    for path in ("/v1/predict", "/predict", "/v1/feedback"):
        status, answer = raw_exchange(keyed, headers_only(path, ALICE, 2 * MB))
        assert status == 413 and b"over 1048576 bytes" in answer, (path, answer[:300])
    status, answer = raw_exchange(keyed, headers_only("/v1/jobs", ALICE, 300 * MB))
    assert status == 413 and b"over 209715200 bytes" in answer


# --- 2. parsing that neither stalls nor multiplies memory --------------------------------------------
def _status_kb(pid: int, name: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(name + ":"))
    return int(line.split()[1])


def peak_growth(pid: int, send) -> tuple[httpx.Response, int]:
    """(answer, peak RSS growth in bytes) of the API process while ``send()`` runs."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now
    before = _status_kb(pid, "VmRSS")
    r = send()
    return r, (_status_kb(pid, "VmHWM") - before) * 1024


def test_job_bodies_never_multiply_the_api_memory(stack, keyed):
    """The issue's CSV (one column, one value a line: 60x the body before) and an accepted JSON body."""
    pid = next(p for p in stack.procs if p.name == "api" and keyed.endswith(str(p.popen.args[-1]))).popen.pid
    one_column = b"0.5\n" * (5 * MB)  # 20 MiB
    X = np.random.default_rng(12).normal(size=(40_000, N_FEATURES))
    as_json = str({"instances": X.tolist()}).replace("'", '"').encode()  # ~16 MiB
    with client(keyed) as c:
        r, growth = peak_growth(
            pid, lambda: c.post("/v1/jobs", content=one_column, headers={"content-type": "text/csv"})
        )
        assert r.status_code == 422 and r.json()["field"] == "instances", r.text
        assert growth <= 3 * len(one_column), f"{growth / MB:.0f} MiB for a {len(one_column) / MB:.0f} MiB body"
        send = lambda: c.post("/v1/jobs", content=as_json, headers={"content-type": "application/json"})  # noqa: E731
        r, growth = peak_growth(pid, send)
        assert r.status_code == 202, r.text
        assert growth <= 3 * len(as_json), f"{growth / MB:.0f} MiB for a {len(as_json) / MB:.0f} MiB body"
        view = wait_job(c, r.json()["job_id"])
    assert view["status"] == "succeeded" and len(view["predictions"]) == len(X)


def test_a_body_refused_after_its_first_chunks_leaves_no_rows_in_redis(stack, keyed):
    """Chunks go to Redis while the body still arrives, two at a time: a bad row past them refuses the job
    (naming the row) and takes back every chunk already stored, including those still on their way."""
    X = np.random.default_rng(13).normal(size=(30_000, N_FEATURES))  # seven full chunks before the bad row
    X[29_000, 3] = np.nan
    stored = lambda: set(stack.client.scan_iter(match=keys.job_input("*", "*")))  # noqa: E731
    before = stored()
    with client(keyed) as c:
        r = c.post("/v1/jobs", content=npy(X), headers={"content-type": "application/x-npy"})
        assert r.status_code == 422 and r.json()["field"] == "instances.29000.3", r.text
        assert c.post("/v1/predict", json={"instances": [ROW]}).status_code == 200  # nothing else lost
    assert stored() <= before


# --- 3. atomic idempotency ------------------------------------------------------------------------------
def test_one_job_per_idempotency_key_under_concurrency(keyed, stack):
    body = npy(np.random.default_rng(3).normal(size=(50_000, N_FEATURES)))  # 8 MB: accepting takes a while
    ledger = stack.client.hget(keys.LEDGER, "accepted")
    headers = {"content-type": "application/x-npy", "Idempotency-Key": "batch-2024-07-01"}

    def submit(_: int) -> httpx.Response:
        with client(keyed) as c:
            return c.post("/v1/jobs", content=body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 202, 409} and codes.count(202) == 1, [r.text[:200] for r in answers]
    assert len({r.json()["job_id"] for r in answers if r.status_code in (200, 202)}) == 1
    assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 409)
    assert int(stack.client.hget(keys.LEDGER, "accepted")) == int(ledger or 0) + 1


def test_idempotency_key_in_flight_is_409_and_another_body_422(keyed, stack):
    X = np.random.default_rng(4).normal(size=(10, N_FEATURES))
    body = str({"instances": X.tolist()}).replace("'", '"').encode()
    go = threading.Event()

    def slow_body() -> Iterator[bytes]:  # the first request stays "being accepted" until told
        yield body[:10]
        go.wait(20)
        yield body[10:]

    headers = {"content-type": "application/json", "Idempotency-Key": "order-77"}
    first: list[httpx.Response] = []
    with client(keyed) as c, client(keyed) as other:
        t = threading.Thread(target=lambda: first.append(c.post("/v1/jobs", content=slow_body(), headers=headers)))
        t.start()
        try:
            claim = keys.idempotency("alice", "order-77")
            wait_until(lambda: (stack.client.get(claim) or b"").startswith(b"pending "), 10, "the key's claim")
            meanwhile = other.post("/v1/jobs", content=body, headers=headers)
            assert meanwhile.status_code == 409 and meanwhile.json()["type"] == problem_type("conflict"), meanwhile.text
        finally:
            go.set()
            t.join()
        assert first[0].status_code == 202, first[0].text
        again = other.post("/v1/jobs", content=body, headers=headers)
        assert again.status_code == 200 and again.json()["job_id"] == first[0].json()["job_id"]
        changed = other.post("/v1/jobs", content=body.replace(b"[[", b"[[1.0,", 1), headers=headers)
        assert changed.status_code == 422 and changed.json()["field"] == "Idempotency-Key", changed.text


def test_a_retry_finishes_a_submit_that_stored_its_job_then_failed(keyed, stack, reference_model, model_dir):
    """Rows and job stored, chunks never published (Redis failed part way): the claim records the job and
    the body's digest; the retry with the same body publishes it, counted once."""
    X = np.random.default_rng(5).normal(size=(6, N_FEATURES))
    body = npy(X)
    job_id, r = "f" * 40, stack.client
    r.set(keys.job_input(job_id, 0), X.astype(np.float32).tobytes(), ex=600)
    version = model_store.current_version(model_dir)  # the job runs the version it names
    r.hset(keys.job(job_id), mapping={"status": "queued", "n_rows": 6, "n_chunks": 1, "rows_done": 0,
                                      "chunks_done": 0, "submitted": time.time(), "work_ms": 0,
                                      "model_version": version, "key_id": "alice"})  # fmt: skip
    r.expire(keys.job(job_id), 600)
    digest = intake.new_digest("npy", None)
    digest.update(body)
    r.set(keys.idempotency("alice", "half-way-2"), f"done {job_id} {digest.hexdigest()}", ex=600)
    with client(keyed) as c:
        retry = c.post(
            "/v1/jobs", content=body, headers={"content-type": "application/x-npy", "Idempotency-Key": "half-way-2"}
        )
        assert retry.status_code == 200 and retry.json()["job_id"] == job_id, retry.text
        assert wait_job(c, job_id)["predictions"] == reference_model.predict(X).tolist()


# --- 4. TTLs that follow the work -----------------------------------------------------------------------
def test_a_job_queued_longer_than_the_result_ttl_keeps_its_rows(stack_factory, reference_model):
    st = stack_factory(INFERPOOL_RESULT_TTL_S="1")  # no worker yet: the job waits on its queue
    X = np.random.default_rng(6).normal(size=(5000, N_FEATURES))  # two chunks
    seen: dict = {}
    with httpx.Client(base_url=st.start_api(), timeout=30) as c:
        job_id = c.post("/v1/jobs", content=npy(X), headers={"content-type": "application/x-npy"}).json()["job_id"]
        time.sleep(3)  # three TTLs
        assert st.client.exists(keys.job_input(job_id, 0), keys.job_input(job_id, 1), keys.job(job_id)) == 3

        def watch() -> None:  # results live one TTL (a second here) after the job ends: be there
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "view" not in seen:
                r = c.get(f"/v1/jobs/{job_id}")
                if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed"):
                    seen.update(view=r.json(), ttl=st.client.ttl(keys.job(job_id)))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        st.start_worker("online", concurrency=1)
        watcher.join()
    assert seen["view"]["status"] == "succeeded" and seen["view"]["predictions"] == reference_model.predict(X).tolist()
    assert 0 < seen["ttl"] <= 3  # counted from the end of the job: the result TTL and a period
    assert st.client.zcard(keys.INFLIGHT) == 0


# --- 5. keys on by default ---------------------------------------------------------------------------------
def test_inferpool_up_generates_a_key_that_its_clients_send(tmp_path, model_dir):
    """`inferpool up` with no key configured makes one, prints it in the curl line, and hands it to the
    command it runs (the load test of `make demo`) as INFERPOOL_API_KEY; without it, data routes say 401."""
    from cli.local_redis import free_port

    check = (
        "import os, httpx; url, key = os.environ['INFERPOOL_API_URL'], os.environ['INFERPOOL_API_KEY'];"
        "body = {'X': [0.5] * 20};"
        "assert httpx.post(url + '/predict', json=body, headers={'X-API-Key': key}).status_code == 200;"
        "assert httpx.post(url + '/predict', json=body).status_code == 401; print('CHECKED')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERPOOL_") and k != "REDIS_URL"}
    env.update(
        INFERPOOL_MODEL_DIR=str(model_dir), INFERPOOL_API_PORT=str(free_port()), INFERPOOL_LOG_LEVEL="WARNING",
        INFERPOOL_WORKER_METRICS_PORT=str(free_port()), INFERPOOL_ONLINE_CONCURRENCY="1",
    )  # fmt: skip
    argv = [sys.executable, "-m", "cli.main", "up", "--var-dir", str(tmp_path / "var"), "--no-flower",
            "--no-scaler", "--run", sys.executable, "-c", check]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0 and "CHECKED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    key_line = next(line for line in done.stdout.splitlines() if line.startswith("api key"))
    secret = key_line.split()[2]
    assert f"-H 'X-API-Key: {secret}'" in done.stdout  # the curl line carries it


def test_the_api_refuses_to_start_with_auth_on_and_no_keys():
    from api.security import AuthConfigError, load_tables
    from inferpool.settings import Settings

    with pytest.raises(AuthConfigError, match="INFERPOOL_API_KEYS"):
        load_tables(Settings(auth="on"))
    assert not load_tables(Settings(auth="off", api_keys="a:b")).required
    assert load_tables(Settings(api_keys="a:b")).required


# --- 6. per-key quotas ------------------------------------------------------------------------------------
def test_a_key_over_its_quota_gets_429_and_other_keys_do_not(stack):
    url, proc = extra_api(stack, INFERPOOL_QUOTA_ROWS_PER_S="5", INFERPOOL_QUOTA_BURST_S="2")  # 10-row buckets
    rows = {"instances": [ROW] * 8}
    with proc_stopped(proc), client(url, BOB) as bob, client(url, ALICE) as alice:
        assert bob.post("/v1/predict", json=rows).status_code == 200  # 8 of the bucket's 10 rows
        refused = bob.post("/v1/predict", json=rows)
        assert refused.status_code == 429 and refused.json()["type"] == problem_type("quota_exceeded"), refused.text
        assert int(refused.headers["retry-after"]) >= 1
        job = bob.post("/v1/jobs", json=rows)  # jobs draw on the same bucket
        assert job.status_code == 429 and job.json()["type"] == problem_type("quota_exceeded")
        assert alice.post("/v1/predict", json=rows).status_code == 200  # buckets are per key
        text = alice.get("/metrics").text
    assert 'inferpool_quota_refused_total{key_id="bob",resource="rows"} 2.0' in text
    assert 'inferpool_quota_charged_rows_total{key_id="alice"} 8.0' in text
