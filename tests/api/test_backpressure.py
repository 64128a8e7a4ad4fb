"""Backpressure: when new work would wait too long, or the backlog is over its cap, the API answers
429 with Retry-After instead of growing the queue; the one-call predict route sheds before the job
route, and admission comes back by itself once the backlog drains."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from api.errors import problem_type
from api.state import predicted_wait_s
from inferpool import keys, queues

ROW = [0.5] * 20
WORK_MS = 200


def test_predicted_wait_is_the_longer_of_age_and_backlog_over_capacity():
    assert predicted_wait_s(depth=0, oldest_age_s=0.0, service_s=0.2, processes=1) == 0.0
    assert predicted_wait_s(depth=20, oldest_age_s=0.1, service_s=0.2, processes=1) == pytest.approx(4.0)
    assert predicted_wait_s(depth=20, oldest_age_s=0.1, service_s=0.2, processes=4) == pytest.approx(1.0)
    assert predicted_wait_s(depth=2, oldest_age_s=3.0, service_s=0.2, processes=4) == 3.0  # already waited
    # Nothing measured yet, or nobody serving the queue: only what has waited counts.
    assert predicted_wait_s(depth=50, oldest_age_s=0.5, service_s=0.0, processes=2) == 0.5
    assert predicted_wait_s(depth=50, oldest_age_s=0.5, service_s=0.2, processes=0) == 0.5


def _retry_after(r: httpx.Response) -> int:
    value = r.headers.get("retry-after")
    assert value is not None and value.isdigit() and int(value) >= 1, r.headers
    return int(value)


async def _burst(url: str, clients: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        calls = [c.post("/v1/predict", json={"instances": [ROW], "work_ms": WORK_MS}) for _ in range(clients)]
        return await asyncio.gather(*calls)


@pytest.mark.slow  # a kill-and-recover run of 20-30 s: `make test-long`
@pytest.mark.timeout(120)
def test_predict_sheds_before_jobs_and_recovers(stack_factory):
    st = stack_factory(INFERPOOL_PREDICT_MAX_WAIT_S="0.5", INFERPOOL_JOB_MAX_WAIT_S="30")
    st.start_worker("online", concurrency=1)
    st.start_worker("work", concurrency=1)
    url = st.start_api()
    c = httpx.Client(base_url=url, timeout=30)
    for _ in range(3):  # a few runs on the work queue: the service time the prediction uses
        assert c.post("/v1/predict", json={"instances": [ROW], "work_ms": WORK_MS}).status_code == 200

    async def overload() -> tuple[list[httpx.Response], list[httpx.Response]]:
        first = asyncio.create_task(_burst(url, 24))  # ~5 s of work for one work process
        await asyncio.sleep(1.0)  # the backlog is visible now; a second wave must be refused
        second = await _burst(url, 8)
        async with httpx.AsyncClient(base_url=url, timeout=30) as jc:
            jobs = [await jc.post("/v1/jobs", json={"instances": [ROW] * 10, "work_ms": WORK_MS}) for _ in range(2)]
        return (await first) + second, jobs

    answers, jobs = asyncio.run(overload())
    codes = [r.status_code for r in answers]
    assert all(code in (200, 429) for code in codes), codes
    shed = [r for r in answers if r.status_code == 429]
    assert shed and codes.count(200) >= 3, codes
    for r in shed:
        assert r.json()["type"] == problem_type("overloaded") and "predicted queue wait" in r.json()["detail"]
        _retry_after(r)
    assert [r.status_code for r in jobs] == [202, 202], [r.text for r in jobs]  # jobs still admitted

    deadline = time.monotonic() + 30  # the backlog drains and predictions are admitted again
    while time.monotonic() < deadline and queues.snapshot(st.client).depth:
        time.sleep(0.2)
    time.sleep(0.5)
    assert c.post("/v1/predict", json={"instances": [ROW], "work_ms": WORK_MS}).status_code == 200


@pytest.mark.timeout(120)
def test_backlog_cap_refuses_new_work_until_it_drains(stack_factory):
    cap = 5
    st = stack_factory(INFERPOOL_MAX_BACKLOG_MESSAGES=str(cap))
    url = st.start_api()  # no worker yet: every accepted job stays queued
    c = httpx.Client(base_url=url, timeout=30)
    codes = []
    for _ in range(3 * cap):
        r = c.post("/v1/jobs", json={"instances": [ROW]})
        codes.append(r.status_code)
        if r.status_code == 429:
            break
        time.sleep(0.3)  # admission reads a queue snapshot at most 250 ms old
    assert codes[-1] == 429 and codes[:-1] == [202] * (len(codes) - 1), codes
    assert cap <= len(codes) - 1 <= cap + 2, codes  # refused once over the cap, not long after
    refused = c.post("/v1/jobs", json={"instances": [ROW]})
    assert refused.status_code == 429 and "backlog" in refused.json()["detail"]
    _retry_after(refused)
    r = c.post("/v1/predict", json={"instances": [ROW]})
    assert r.status_code == 429 and "backlog" in r.json()["detail"]  # the cap covers every route
    assert st.client.llen(keys.QUEUE_BULK) == len(codes) - 1  # nothing refused reached the queue

    st.start_worker("online", concurrency=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and queues.snapshot(st.client).depth:
        time.sleep(0.2)
    time.sleep(0.3)
    assert c.post("/v1/jobs", json={"instances": [ROW]}).status_code == 202
    assert c.post("/v1/predict", json={"instances": [ROW]}).status_code == 200
