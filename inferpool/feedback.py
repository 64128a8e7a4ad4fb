"""Realised accuracy: true labels sent after the prediction, kept in one bounded window.

Each entry of ``keys.FEEDBACK`` is one JSON object (newest first), so any client,
``decode_responses`` or not, can read it. The API looks up the predicted label and
its time in the job store and passes them in; nothing here reads the job store.

Concept drift (``concept``): the inputs may look as they did in training while what they mean has
changed. Where labels arrive, the accuracy of the newest labelled predictions is compared with the
model's held-out score from its manifest (``model_store.HeldOut.score``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio
from scipy import stats as sps

from inferpool import keys
from inferpool.drift.report import Status
from inferpool.model_store import Manifest
from inferpool.settings import Settings

logger = logging.getLogger(__name__)

FEEDBACK_WINDOW = 10_000

Label = int | str


@dataclass(frozen=True)
class FeedbackEntry:
    job_id: str
    row: int  # the row's index in its job: (job_id, row) names the prediction
    true_label: Label
    predicted_label: Label
    predicted_at: float  # epoch seconds
    received_at: float  # epoch seconds

    @property
    def correct(self) -> bool:
        # Compared as text: a label sent as JSON "1" is the model's 1.
        return str(self.true_label) == str(self.predicted_label)

    @property
    def delay_s(self) -> float:
        # Clamped: predicted_at and received_at may come from hosts whose clocks disagree.
        return max(0.0, self.received_at - self.predicted_at)


def encode_entry(entry: FeedbackEntry) -> bytes:
    return json.dumps(asdict(entry), separators=(",", ":")).encode()


def decode_entry(raw: bytes | str) -> FeedbackEntry:
    return FeedbackEntry(**json.loads(raw))


async def record_feedback(
    aclient: redis.asyncio.Redis,
    job_id: str,
    row: int,
    true_label: Label,
    predicted_label: Label,
    predicted_at: float,
    received_at: float | None = None,
    window: int = FEEDBACK_WINDOW,
) -> FeedbackEntry:
    """Store one labelled prediction; the list keeps only the newest ``window`` entries."""
    if window < 1:
        raise ValueError("window must be at least 1")
    entry = FeedbackEntry(
        job_id=job_id,
        row=int(row),
        true_label=true_label,
        predicted_label=predicted_label,
        predicted_at=float(predicted_at),
        received_at=time.time() if received_at is None else float(received_at),
    )
    await record_entries(aclient, [entry], window)
    return entry


async def record_entries(
    aclient: redis.asyncio.Redis, entries: list[FeedbackEntry], window: int = FEEDBACK_WINDOW
) -> None:
    """Store labelled predictions in order, in one round trip; the list keeps only the newest ``window``."""
    if window < 1:
        raise ValueError("window must be at least 1")
    if not entries:
        return
    pipe = aclient.pipeline(transaction=True)
    pipe.lpush(keys.FEEDBACK, *(encode_entry(e) for e in entries))
    pipe.ltrim(keys.FEEDBACK, 0, window - 1)
    await pipe.execute()


def summarize(entries: Iterable[FeedbackEntry]) -> dict[str, Any]:
    """Count, realised accuracy and label delay (p50/p95, seconds) over ``entries``.

    Accuracy and delays are None when there are no entries, rather than 0.
    """
    items = list(entries)
    if not items:
        return {"count": 0, "correct": 0, "accuracy": None, "label_delay_s": {"p50": None, "p95": None}}
    correct = sum(e.correct for e in items)
    delays = np.array([e.delay_s for e in items], dtype=np.float64)
    p50, p95 = np.percentile(delays, [50, 95])
    return {
        "count": len(items),
        "correct": correct,
        "accuracy": correct / len(items),
        "label_delay_s": {"p50": float(p50), "p95": float(p95)},
    }


def decode_entries(raw: Iterable[bytes | str]) -> list[FeedbackEntry]:
    """LRANGE results -> entries in the same order; entries that fail to decode are skipped and logged."""
    out = []
    for item in raw:
        try:
            out.append(decode_entry(item))
        except (ValueError, TypeError):
            logger.warning("feedback window: skipping an entry that is not a feedback record")
    return out


async def aentries(aclient: redis.asyncio.Redis, limit: int | None = None) -> list[FeedbackEntry]:
    """The newest ``limit`` entries (every one by default), newest first; see ``decode_entries``."""
    return decode_entries(await aclient.lrange(keys.FEEDBACK, 0, -1 if limit is None else limit - 1))


def entries(client: redis.Redis, limit: int | None = None) -> list[FeedbackEntry]:
    """``aentries`` for a sync client (the exporter)."""
    return decode_entries(client.lrange(keys.FEEDBACK, 0, -1 if limit is None else limit - 1))


async def asummary(aclient: redis.asyncio.Redis) -> dict[str, Any]:
    """``summarize`` over the shared window."""
    return summarize(await aentries(aclient))


# --- concept drift ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptReport:
    status: Status
    drifted: bool
    n: int  # labelled predictions judged: the newest, at most ``window``
    correct: int
    accuracy: float | None
    training_score: float | None  # held-out accuracy recorded at train/register time
    drop: float | None  # training_score - accuracy
    # Chance of this few correct answers (or fewer) if the model were still as accurate as in training.
    p_value: float | None
    window: int
    min_labels: int
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


def concept(
    newest_first: Sequence[FeedbackEntry],
    training_score: float | None,
    window: int = 500,
    min_labels: int = 100,
    alpha: float = 0.01,
    min_drop: float = 0.05,
) -> ConceptReport:
    """Concept-drift verdict over the newest ``window`` labelled predictions.

    Drifted when their accuracy is below ``training_score`` by at least ``min_drop`` and by more than
    chance explains (one-sided binomial test, ``p < alpha``). No verdict without a training score
    (a manifest from before it was recorded) or with fewer than ``min_labels`` labels.
    """
    items = list(newest_first[:window])
    n, correct = len(items), sum(e.correct for e in items)
    acc = correct / n if n else None

    def report(status: Status, p: float | None = None, reason: str | None = None) -> ConceptReport:
        drop = None if acc is None or training_score is None else training_score - acc
        drifted = status is Status.DRIFTED
        return ConceptReport(status, drifted, n, correct, acc, training_score, drop, p, window, min_labels, reason)

    if training_score is None:
        return report(Status.INSUFFICIENT_DATA, reason="the manifest records no held-out score")
    if n < min_labels:
        return report(Status.INSUFFICIENT_DATA, reason=f"{n} labels, {min_labels} needed")
    p = float(sps.binom.cdf(correct, n, training_score))
    if p < alpha and training_score - correct / n >= min_drop:
        return report(
            Status.DRIFTED, p, f"accuracy {correct / n:.1%} over the last {n} labels, {training_score:.1%} held out"
        )
    return report(Status.STABLE, p)


def judge(newest_first: Sequence[FeedbackEntry], manifest: Manifest, s: Settings) -> ConceptReport:
    """``concept`` against the served model's held-out score, with the configured window and thresholds."""
    score = manifest.held_out.score if manifest.held_out is not None else None
    return concept(
        newest_first, score, s.drift_accuracy_window, s.drift_accuracy_min_labels,
        s.drift_accuracy_alpha, s.drift_accuracy_min_drop,
    )  # fmt: skip
