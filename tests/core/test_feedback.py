"""Feedback: realised accuracy and label delay, pure and over a real Redis window; the concept-drift verdict,
pure and through the API on real workers."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio
from sklearn.datasets import make_classification

from api.schemas import AccuracyResponse, ConceptVerdict
from inferpool import keys, model_store
from inferpool.drift import Status
from inferpool.feedback import FEEDBACK_WINDOW, FeedbackEntry, aentries, asummary, concept, record_feedback, summarize
from tests.support.waiting import wait_until


@pytest.fixture
def _drift_redis(redis_server) -> str:
    """The session's redis-server (tests/conftest.py), database 6: flushing it never touches the shared stack's."""
    return redis_server.url.rsplit("/", 1)[0] + "/6"


@pytest.fixture
def redis_url(_drift_redis: str) -> str:
    client = redis.Redis.from_url(_drift_redis)
    client.flushdb()
    client.close()
    return _drift_redis


def _entry(true: int | str, predicted: int | str, delay_s: float) -> FeedbackEntry:
    return FeedbackEntry("job", 0, true, predicted, predicted_at=1000.0, received_at=1000.0 + delay_s)


def test_summarize_accuracy_and_delay() -> None:
    entries = [_entry(1, 1, d) for d in range(1, 8)] + [_entry(0, 1, 8), _entry(1, 0, 9), _entry(0, 0, 10)]
    s = summarize(entries)
    assert s["count"] == 10 and s["correct"] == 8
    assert s["accuracy"] == pytest.approx(0.8)
    assert s["label_delay_s"]["p50"] == pytest.approx(5.5)
    assert s["label_delay_s"]["p95"] == pytest.approx(9.55)


def test_summarize_empty_and_edge_cases() -> None:
    assert summarize([]) == {"count": 0, "correct": 0, "accuracy": None, "label_delay_s": {"p50": None, "p95": None}}
    # A label sent as JSON text still matches the model's int; clock skew never gives a negative delay.
    s = summarize([_entry("1", 1, -3.0)])
    assert s["accuracy"] == 1.0 and s["label_delay_s"]["p50"] == 0.0


def test_record_and_summary_over_redis(redis_url: str) -> None:
    async def scenario() -> tuple[dict, list[FeedbackEntry], int]:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        try:
            for i in range(30):
                await record_feedback(
                    aclient,
                    job_id=f"j{i}",
                    row=i,
                    true_label=i % 2,
                    predicted_label=0 if i < 20 else 1,
                    predicted_at=100.0 + i,
                    received_at=100.0 + i + 4.0,
                    window=25,
                )
            # Garbage in the list is skipped, not fatal.
            await aclient.lpush(keys.FEEDBACK, b"not json")
            return await asummary(aclient), await aentries(aclient), await aclient.llen(keys.FEEDBACK)
        finally:
            await aclient.aclose()

    summary, entries, length = asyncio.run(scenario())
    assert length == 26
    # The window keeps the newest 25 (i = 5..29), newest first.
    assert [e.job_id for e in entries] == [f"j{i}" for i in range(29, 4, -1)]
    assert entries[0].row == 29
    # Correct: even i < 20 predicted 0 (i = 6..18 even: 7), odd i >= 20 predicted 1 (21..29 odd: 5).
    assert summary["count"] == 25 and summary["correct"] == 12
    assert summary["accuracy"] == pytest.approx(12 / 25)
    assert summary["label_delay_s"] == {"p50": pytest.approx(4.0), "p95": pytest.approx(4.0)}


def test_record_defaults_received_at_to_now(redis_url: str) -> None:
    async def scenario() -> FeedbackEntry:
        aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            await record_feedback(aclient, "j", 0, "cat", "dog", predicted_at=time.time() - 2.0)
            (entry,) = await aentries(aclient)
            return entry
        finally:
            await aclient.aclose()

    entry = asyncio.run(scenario())
    assert entry.true_label == "cat" and not entry.correct
    assert 1.5 < entry.delay_s < 10.0


# --- concept drift ----------------------------------------------------------------------------------------


def _labels(n_correct: int, n_wrong: int) -> list[FeedbackEntry]:
    return [_entry(1, 1, 1.0)] * n_correct + [_entry(0, 1, 1.0)] * n_wrong


def test_concept_verdict() -> None:
    # At the held-out score: stable; well below it, with enough labels: drifted, with the reason.
    stable = concept(_labels(186, 14), training_score=0.93, window=500, min_labels=100)
    assert stable.status is Status.STABLE and not stable.drifted and stable.accuracy == pytest.approx(0.93)
    low = concept(_labels(150, 50), training_score=0.93, window=500, min_labels=100)
    assert low.drifted and low.p_value < 1e-6 and low.drop == pytest.approx(0.18)
    assert low.reason == "accuracy 75.0% over the last 200 labels, 93.0% held out"
    # Only the newest `window` labels count: the old wrong ones have left it.
    recent = concept(_labels(300, 0) + _labels(0, 300), training_score=0.93, window=300, min_labels=100)
    assert recent.n == 300 and recent.accuracy == 1.0 and not recent.drifted
    # Significant but too small a drop to act on; too few labels; no score to compare with.
    assert not concept(_labels(8800, 1200), training_score=0.9, window=10_000, min_labels=100).drifted
    assert concept(_labels(10, 40), 0.93, min_labels=100).status is Status.INSUFFICIENT_DATA
    none = concept(_labels(200, 0), None)
    assert none.status is Status.INSUFFICIENT_DATA and none.reason == "the manifest records no held-out score"
    assert set(low.to_json()) == set(ConceptVerdict.model_fields)


def test_accuracy_route_judges_concept_drift(stack, api, model_dir) -> None:
    """Labels that agree with the model, then labels that contradict it: the verdict follows the newest window."""
    X, y = make_classification(n_samples=500, n_features=20, random_state=42)  # the reference training set
    stack.client.delete(keys.FEEDBACK)
    try:
        job = api.post("/v1/jobs", json={"instances": X[:150].tolist()}).json()["job_id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 30, "job")
        predicted = api.get(f"/v1/jobs/{job}").json()["predictions"]

        def send(labels: list[int]) -> None:
            body = {"labels": [{"job_id": job, "row": i, "label": int(v)} for i, v in enumerate(labels)]}
            assert api.post("/v1/feedback", json=body).status_code == 200

        send(predicted)
        calm = api.get("/v1/monitoring/accuracy").json()
        AccuracyResponse.model_validate(calm)
        held_out = model_store.read_manifest(model_dir).held_out.score
        assert calm["concept"]["status"] == "stable" and calm["concept"]["training_score"] == held_out
        send([1 - p for p in predicted])
        moved = api.get("/v1/monitoring/accuracy").json()["concept"]
        assert moved["drifted"] and moved["n"] == 300 and moved["accuracy"] == 0.5
    finally:
        stack.client.delete(keys.FEEDBACK)


def test_ten_thousand_labels_for_one_job_in_one_call(stack, api) -> None:
    """The most labels one call takes, all for rows of one job: each is judged against its own prediction
    (the job is read once, not once per label) and the window keeps the newest."""
    X, _ = make_classification(n_samples=2000, n_features=20, random_state=7)
    stack.client.delete(keys.FEEDBACK)
    try:
        job = api.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 30, "job")
        predicted = api.get(f"/v1/jobs/{job}").json()["predictions"]
        # Rows cycle through the job; every fourth label contradicts the model.
        labels = [
            {"job_id": job, "row": i % 2000, "label": predicted[i % 2000] if i % 4 else 1 - predicted[i % 2000]}
            for i in range(10_000)
        ]
        r = api.post("/v1/feedback", json={"labels": labels})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 10_000
        window = api.get("/v1/monitoring/accuracy").json()
        assert window["count"] == min(10_000, FEEDBACK_WINDOW) and window["accuracy"] == 0.75
    finally:
        stack.client.delete(keys.FEEDBACK)
