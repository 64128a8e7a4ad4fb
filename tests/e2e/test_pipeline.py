"""The pipeline end to end, on real processes: submit, queue, predict, poll."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest

from api.errors import problem_type
from inferpool import keys
from tests.support.jobs import wait_job

N_FEATURES = 20


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def test_job_predictions_equal_model_predict_in_order(api, reference_model):
    X = rows(10_000, seed=1)
    r = api.post("/v1/jobs", json={"instances": X.tolist()})
    assert r.status_code == 202
    body = r.json()
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    view = wait_job(api, body["job_id"])
    assert view["status"] == "succeeded"
    assert view["progress"] == {"rows_done": 10_000, "rows_total": 10_000}
    assert view["predictions"] == reference_model.predict(X).tolist()
    assert view["timings"]["queue_wait_s"] >= 0 and view["timings"]["run_s"] >= 0


def test_100k_row_job_split_across_workers_and_reassembled(api, stack, reference_model):
    X = rows(100_000, seed=2)
    buf = io.BytesIO()
    np.save(buf, X)
    r = api.post("/v1/jobs", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    n_chunks = int(stack.client.hget(keys.job(job_id), "n_chunks"))
    assert n_chunks == 25  # 4,096-row chunks
    view = wait_job(api, job_id)
    assert view["status"] == "succeeded"
    assert view["predictions"] == reference_model.predict(X).tolist()


def test_csv_upload(api, reference_model):
    X = rows(300, seed=3)
    text = ",".join(f"f{i}" for i in range(N_FEATURES)) + "\n"
    text += "\n".join(",".join(repr(float(v)) for v in r) for r in X)
    r = api.post("/v1/jobs", files={"file": ("rows.csv", text.encode(), "text/csv")})
    assert r.status_code == 202, r.text
    assert wait_job(api, r.json()["job_id"])["predictions"] == reference_model.predict(X).tolist()


async def _concurrent(url: str, n_clients: int, per_client: int, make_body, check) -> int:
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def one(i: int) -> None:
            nonlocal errors
            for j in range(per_client):
                body, expect = make_body(i, j)
                r = await c.post(body[0], json=body[1])
                if r.status_code != 200 or not check(r.json(), expect):
                    errors += 1

        await asyncio.gather(*(one(i) for i in range(n_clients)))
    return errors


def test_predict_routes_under_50_concurrent_clients(stack, reference_model):
    X = rows(50 * 6, seed=4)
    expected = reference_model.predict(X)

    def compat(i, j):
        k = i * 6 + j
        return ("/predict", {"X": X[k].tolist()}), int(expected[k])

    def v1(i, j):
        k = i * 6 + j
        return ("/v1/predict", {"instances": [X[k].tolist()]}), [int(expected[k])]

    assert asyncio.run(_concurrent(stack.url, 50, 6, compat, lambda b, e: b["prediction"] == e)) == 0
    assert asyncio.run(_concurrent(stack.url, 50, 6, v1, lambda b, e: b["predictions"] == e)) == 0


def test_every_caller_gets_its_own_rows_with_mixed_batch_sizes(stack, reference_model):
    """Concurrent callers with 1 to 17 rows each are coalesced; each must get exactly its own answers."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 18, size=120)
    blocks = [rows(int(n), seed=100 + i) for i, n in enumerate(sizes)]

    def body(i, j):
        return ("/v1/predict", {"instances": blocks[i].tolist()}), reference_model.predict(blocks[i]).tolist()

    assert asyncio.run(_concurrent(stack.url, len(blocks), 1, body, lambda b, e: b["predictions"] == e)) == 0


def test_one_call_answer_is_pollable_as_a_job(api, reference_model):
    X = rows(3, seed=6)
    r = api.post("/v1/predict", json={"instances": X.tolist(), "work_ms": 20})
    assert r.status_code == 200
    job = api.get(f"/v1/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "succeeded"
    assert job["predictions"] == reference_model.predict(X).tolist()


def test_unknown_job_is_404(api):
    r = api.get("/v1/jobs/" + "0" * 40)
    assert r.status_code == 404
    assert r.json()["type"] == problem_type("not_found")


def test_health_ready_models(api, model_dir):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    m = api.get("/v1/models").json()
    assert m["n_features"] == N_FEATURES and len(m["sha256"]) == 64
    assert (model_dir / m["file"]).exists()
    assert api.get("/docs").status_code == 200


@pytest.mark.timeout(120)
def test_status_transitions_and_late_worker(stack_factory, reference_model):
    """Jobs queued with no worker wait as 'queued'; a worker started later runs them to 'succeeded'."""
    st = stack_factory()
    st.start_api()
    c = httpx.Client(base_url=st.url, timeout=30)
    X = rows(5000, seed=7)
    job_ids = [c.post("/v1/jobs", json={"instances": X.tolist(), "work_ms": 300}).json()["job_id"] for _ in range(2)]
    time.sleep(0.5)
    assert {c.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids} == {"queued"}
    assert c.get("/readyz").status_code == 503  # no worker alive
    st.start_worker("work", concurrency=1)
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = [c.get(f"/v1/jobs/{j}").json() for j in job_ids]
        seen |= {v["status"] for v in views}
        if all(v["status"] == "succeeded" for v in views):
            break
        time.sleep(0.05)
    assert "running" in seen
    for v in views:
        assert v["status"] == "succeeded"
        assert v["predictions"] == reference_model.predict(X).tolist()
        assert v["timings"]["queue_wait_s"] > 0.4  # waited for the late worker
