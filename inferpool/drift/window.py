"""The Redis edge: ONE bounded window of recent inputs shared by every API and worker process.

Workers sample predicted rows per task and push the samples of each half second in one MULTI/EXEC
(``inferpool.drift.buffer``; ``record`` pushes at once);
the API pushes a sample of the rows it refused (``arecord_refusals``, only when it refuses). Reading
(``read`` / ``aread``) happens when the drift route or the exporter asks.

Layout: ``keys.DRIFT_SAMPLES`` holds one entry per row, ``keys.DRIFT_CLASSES`` the same row's
predicted class as text, newest first; both are written and trimmed in one MULTI/EXEC, so element i of
one list belongs with element i of the other. A predicted row is little-endian float32 bytes. A refused
row is the class ``REFUSED`` beside the indexes of the features it was refused for, as text ("3,7"):
it has no values worth keeping, but it takes its place in the window, so the refused share of the
window is the refused share of the rows offered. Rows are binary: clients here need
``decode_responses=False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio

from inferpool import keys
from inferpool.drift.evaluate import Refusals

logger = logging.getLogger(__name__)

ROW_DTYPE = np.dtype("<f4")
REFUSED = b"!refused"


@dataclass(frozen=True)
class Window:
    X: np.ndarray  # predicted rows, oldest first, float64 (n, n_features)
    classes: np.ndarray  # their predicted classes
    refused: Refusals


_rng: tuple[int, np.random.Generator] | None = None


def _process_rng() -> np.random.Generator:
    """One generator per process (seeding one costs more than the sampling); prefork children get their own."""
    global _rng
    if _rng is None or _rng[0] != os.getpid():
        _rng = (os.getpid(), np.random.default_rng())
    return _rng[1]


def record(
    client: redis.Redis,
    rows: np.ndarray,
    predictions: np.ndarray,
    sample_rate: float,
    window: int,
    rng: np.random.Generator | None = None,
) -> int:
    """Push a random ``sample_rate`` share of ``rows`` (and their predictions) into the window.

    Each row is kept independently with probability ``sample_rate``, so the window
    is an unbiased sample whatever the batch sizes; at most ``window`` rows are
    pushed per call, so a million-row job costs no more than one window. Returns
    the number pushed. Redis errors propagate: the caller decides whether
    monitoring may fail a prediction.
    """
    picked = sample(rows, predictions, sample_rate, window, rng)
    if picked is None:
        return 0
    push(client, *picked, window)
    return len(picked[0])


def sample(
    rows: np.ndarray,
    predictions: np.ndarray,
    sample_rate: float,
    window: int,
    rng: np.random.Generator | None = None,
) -> tuple[list[bytes], list[bytes]] | None:
    """The window entries for a ``sample_rate`` share of ``rows``: (rows, classes), oldest first; None if none."""
    rows = np.asarray(rows)
    predictions = np.asarray(predictions).ravel()
    if rows.ndim != 2 or rows.shape[0] != predictions.shape[0]:
        raise ValueError(f"rows {rows.shape} and predictions {predictions.shape} do not pair up")
    if window < 1:
        raise ValueError("window must be at least 1")
    if sample_rate <= 0 or rows.shape[0] == 0:
        return None
    rng = rng if rng is not None else _process_rng()
    n = rows.shape[0]
    k = min(int(rng.binomial(n, min(sample_rate, 1.0))), window)
    if k == 0:
        return None
    # Sorted so the newest row of the batch also ends up nearest the head.
    idx = np.sort(rng.choice(n, size=k, replace=False))
    sampled = np.ascontiguousarray(rows[idx], dtype=ROW_DTYPE)
    return [r.tobytes() for r in sampled], [str(c).encode() for c in predictions[idx]]


def push(client: redis.Redis, samples: list[bytes], classes: list[bytes], window: int) -> None:
    """Push aligned entries (oldest first) and trim the window, in one MULTI/EXEC."""
    _push(client.pipeline(transaction=True), samples, classes, window).execute()


def _push(pipe: Any, samples: list[bytes], classes: list[bytes], window: int) -> Any:
    """Queue a push of aligned entries and the trim on ``pipe`` (a sync or an asyncio pipeline)."""
    pipe.lpush(keys.DRIFT_SAMPLES, *samples)
    pipe.lpush(keys.DRIFT_CLASSES, *classes)
    pipe.ltrim(keys.DRIFT_SAMPLES, 0, window - 1)
    pipe.ltrim(keys.DRIFT_CLASSES, 0, window - 1)
    return pipe


def sample_refusals(
    rows: Sequence[Sequence[int]], sample_rate: float, window: int, rng: np.random.Generator | None = None
) -> list[bytes]:
    """The window entries for refused ``rows`` (each the feature indexes it was refused for), sampled at the
    rate predicted rows are, so refused and predicted rows keep their proportions in the window."""
    if sample_rate <= 0 or not rows:
        return []
    rng = rng if rng is not None else _process_rng()
    kept = np.flatnonzero(rng.random(len(rows)) < sample_rate)[:window]
    return [",".join(str(j) for j in sorted(set(rows[i]))).encode() for i in kept if rows[i]]


async def arecord_refusals(
    aclient: redis.asyncio.Redis,
    rows: Sequence[Sequence[int]],
    sample_rate: float,
    window: int,
    rng: np.random.Generator | None = None,
) -> int:
    """Push a sample of refused ``rows`` into the window (the API's 422 path only). Returns the number pushed."""
    if window < 1:
        raise ValueError("window must be at least 1")
    entries = sample_refusals(rows, sample_rate, window, rng)
    if entries:
        await _push(aclient.pipeline(transaction=True), entries, [REFUSED] * len(entries), window).execute()
    return len(entries)


def _decode_classes(raw: list[bytes]) -> np.ndarray:
    text = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    try:
        return np.array([int(c) for c in text], dtype=np.int64)
    except ValueError:
        return np.array(text, dtype=str)


def _refused_features(raw: bytes) -> list[int]:
    try:
        return [int(v) for v in raw.split(b",") if v]
    except ValueError:
        return []


def decode(raw_rows: list[bytes], raw_classes: list[bytes]) -> Window:
    """LRANGE results (newest first) -> the window: predicted rows oldest first, their classes, refusals.

    After a model swap the window can hold rows of two widths; only rows as wide as the newest
    predicted one are kept, with their classes, so ``evaluate`` sees one model's inputs.
    """
    n = min(len(raw_rows), len(raw_classes))
    refused_at = [i for i in range(n) if raw_classes[i] == REFUSED]
    by_feature: dict[int, int] = {}
    for i in refused_at:
        for j in _refused_features(raw_rows[i]):
            by_feature[j] = by_feature.get(j, 0) + 1
    refusals = Refusals(len(refused_at), by_feature)
    skip = set(refused_at)
    predicted = [i for i in range(n) if i not in skip]
    if not predicted:
        return Window(np.empty((0, 0), dtype=np.float64), np.empty(0, dtype=np.int64), refusals)
    width = len(raw_rows[predicted[0]])
    keep = [i for i in predicted if len(raw_rows[i]) == width]
    if len(keep) < len(predicted):
        logger.info("drift window: ignoring %d rows of another width (previous model)", len(predicted) - len(keep))
    keep.reverse()
    X = np.frombuffer(b"".join(raw_rows[i] for i in keep), dtype=ROW_DTYPE).reshape(len(keep), -1)
    return Window(X.astype(np.float64), _decode_classes([raw_classes[i] for i in keep]), refusals)


def decode_window(raw_rows: list[bytes], raw_classes: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``decode`` without the refusals: (X oldest first, classes)."""
    w = decode(raw_rows, raw_classes)
    return w.X, w.classes


def lranges(pipe: Any) -> Any:
    """Queue the two LRANGEs of the window on ``pipe`` (a sync or an asyncio pipeline)."""
    pipe.lrange(keys.DRIFT_SAMPLES, 0, -1)
    pipe.lrange(keys.DRIFT_CLASSES, 0, -1)
    return pipe


def read(client: redis.Redis) -> Window:
    """The shared window; see ``decode``."""
    raw_rows, raw_classes = lranges(client.pipeline(transaction=True)).execute()
    return decode(raw_rows, raw_classes)


async def aread(aclient: redis.asyncio.Redis) -> Window:
    """``read`` for the API's asyncio client."""
    raw_rows, raw_classes = await lranges(aclient.pipeline(transaction=True)).execute()
    return decode(raw_rows, raw_classes)


def read_window(client: redis.Redis) -> tuple[np.ndarray, np.ndarray]:
    """The shared window's predicted rows and classes (no refusals); see ``decode``."""
    w = read(client)
    return w.X, w.classes


async def aread_window(aclient: redis.asyncio.Redis) -> tuple[np.ndarray, np.ndarray]:
    """``read_window`` for the API's asyncio client."""
    w = await aread(aclient)
    return w.X, w.classes
