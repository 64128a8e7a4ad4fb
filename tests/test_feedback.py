"""Feedback: realised accuracy and label delay, pure and over a real Redis window."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio

from inferpool import keys
from inferpool.feedback import FeedbackEntry, aentries, asummary, record_feedback, summarize


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
    return FeedbackEntry("job", [0.0], true, predicted, predicted_at=1000.0, received_at=1000.0 + delay_s)


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
                    row=[float(i), 2.5],
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
    assert entries[0].row == [29.0, 2.5]
    # Correct: even i < 20 predicted 0 (i = 6..18 even: 7), odd i >= 20 predicted 1 (21..29 odd: 5).
    assert summary["count"] == 25 and summary["correct"] == 12
    assert summary["accuracy"] == pytest.approx(12 / 25)
    assert summary["label_delay_s"] == {"p50": pytest.approx(4.0), "p95": pytest.approx(4.0)}


def test_record_defaults_received_at_to_now(redis_url: str) -> None:
    async def scenario() -> FeedbackEntry:
        aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            await record_feedback(aclient, "j", [1.0], "cat", "dog", predicted_at=time.time() - 2.0)
            (entry,) = await aentries(aclient)
            return entry
        finally:
            await aclient.aclose()

    entry = asyncio.run(scenario())
    assert entry.true_label == "cat" and not entry.correct
    assert 1.5 < entry.delay_s < 10.0
