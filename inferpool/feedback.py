"""Realised accuracy: true labels sent after the prediction, kept in one bounded window.

Each entry of ``keys.FEEDBACK`` is one JSON object (newest first), so any client,
``decode_responses`` or not, can read it. The API looks up the predicted label and
its time in the job store and passes them in; nothing here reads the job store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import redis.asyncio

from inferpool import keys

logger = logging.getLogger(__name__)

FEEDBACK_WINDOW = 10_000

Label = int | str


@dataclass(frozen=True)
class FeedbackEntry:
    job_id: str
    row: list[float]
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
    row: Sequence[float],
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
        row=[float(v) for v in row],
        true_label=true_label,
        predicted_label=predicted_label,
        predicted_at=float(predicted_at),
        received_at=time.time() if received_at is None else float(received_at),
    )
    pipe = aclient.pipeline(transaction=True)
    pipe.lpush(keys.FEEDBACK, encode_entry(entry))
    pipe.ltrim(keys.FEEDBACK, 0, window - 1)
    await pipe.execute()
    return entry


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


async def aentries(aclient: redis.asyncio.Redis) -> list[FeedbackEntry]:
    """Every entry in the window, newest first; entries that fail to decode are skipped and logged."""
    out = []
    for raw in await aclient.lrange(keys.FEEDBACK, 0, -1):
        try:
            out.append(decode_entry(raw))
        except (ValueError, TypeError):
            logger.warning("feedback window: skipping an entry that is not a feedback record")
    return out


async def asummary(aclient: redis.asyncio.Redis) -> dict[str, Any]:
    """``summarize`` over the shared window."""
    return summarize(await aentries(aclient))
