"""Input drift: compare a shared window of recent inputs with the training summaries.

Pure logic (``psi``, ``ks_statistic``, ``evaluate``) plus the Redis edge that keeps
ONE bounded window for every API and worker process: ``record`` (workers, sync)
pushes a random sample of predicted rows, ``read_window`` / ``aread_window`` read it.

Window layout: ``keys.DRIFT_SAMPLES`` holds one row per element as little-endian
float32 bytes, ``keys.DRIFT_CLASSES`` the predicted class of the same row as text.
Both are written and trimmed in one MULTI/EXEC, so element i of one list is the
row whose prediction is element i of the other, newest first. Rows are binary, so
the Redis clients given here must use ``decode_responses=False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import redis
import redis.asyncio

from inferpool import keys
from inferpool.model_store import FeatureSummary, Manifest

logger = logging.getLogger(__name__)

# With no drift at all, PSI over k bins from n rows is about chi2(k-1)/n, mean
# (k-1)/n. Measured on the reference data (10 bins): at n=50 the mean is 0.23 and
# 86% of unchanged features read "moderate" (so the window would say drifted);
# at n=300 the mean is 0.03 and 0.15% do. Below this, no verdict.
MIN_SAMPLES = 300
PSI_EPS = 1e-4
ROW_DTYPE = np.dtype("<f4")


class Verdict(StrEnum):
    """Drift of one feature (or of the predicted-class mix), by PSI threshold."""

    NONE = "none"
    MODERATE = "moderate"
    MAJOR = "major"
    INSUFFICIENT_DATA = "insufficient_data"


class Status(StrEnum):
    """Verdict on the whole window."""

    STABLE = "stable"
    DRIFTED = "drifted"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class FeatureDrift:
    index: int
    psi: float | None
    ks: float | None
    verdict: Verdict
    mean: float | None
    train_mean: float
    # (window mean - training mean) / training std: says which way and how far.
    mean_shift_std: float | None


@dataclass(frozen=True)
class ClassDrift:
    classes: list[str]
    expected: list[float]
    observed: list[float] | None
    psi: float | None
    verdict: Verdict
    n: int
    # Predictions naming a class the manifest does not list (left out of the PSI).
    n_unknown: int


@dataclass(frozen=True)
class DriftReport:
    status: Status
    drifted: bool
    n_samples: int
    min_samples: int
    psi_moderate: float
    psi_major: float
    features: list[FeatureDrift]
    predictions: ClassDrift | None

    @property
    def n_features_drifted(self) -> int:
        return sum(f.verdict in (Verdict.MODERATE, Verdict.MAJOR) for f in self.features)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (str, int, float, None, lists) for ``GET /v1/monitoring/drift``."""
        p = self.predictions
        return {
            "status": self.status.value,
            "drifted": self.drifted,
            "n_samples": self.n_samples,
            "min_samples": self.min_samples,
            "thresholds": {"psi_moderate": self.psi_moderate, "psi_major": self.psi_major},
            "n_features": len(self.features),
            "n_features_drifted": self.n_features_drifted,
            "features": [
                {
                    "index": f.index,
                    "psi": f.psi,
                    "ks": f.ks,
                    "verdict": f.verdict.value,
                    "mean": f.mean,
                    "train_mean": f.train_mean,
                    "mean_shift_std": f.mean_shift_std,
                }
                for f in self.features
            ],
            "predictions": None
            if p is None
            else {
                "classes": p.classes,
                "expected": p.expected,
                "observed": p.observed,
                "psi": p.psi,
                "verdict": p.verdict.value,
                "n": p.n,
                "n_unknown": p.n_unknown,
            },
        }


def psi(expected: Sequence[float], actual_counts: Sequence[int], eps: float = PSI_EPS) -> float:
    """Population Stability Index, ``sum((a - e) * ln(a / e))`` over bins.

    ``expected`` are training proportions, ``actual_counts`` the window's counts in
    the same bins. Both proportions are floored at ``eps`` so an empty bin costs a
    large but finite amount instead of inf.
    """
    e = np.asarray(expected, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if e.shape != counts.shape or e.ndim != 1:
        raise ValueError(f"expected {e.shape} and actual_counts {counts.shape} must be 1-d and the same length")
    total = counts.sum()
    if total <= 0:
        raise ValueError("actual_counts is empty: PSI needs at least one observation")
    a = np.maximum(counts / total, eps)
    e = np.maximum(e, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_counts(summary: FeatureSummary, values: np.ndarray) -> np.ndarray:
    # Bins are [edge_i, edge_i+1) as np.histogram made them in summarize_features.
    inner = np.asarray(summary.edges[1:-1], dtype=np.float64)
    idx = np.searchsorted(inner, values, side="right")
    return np.bincount(idx, minlength=len(summary.proportions))


def ks_statistic(summary: FeatureSummary, values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the window and the training distribution.

    The training data itself is not kept, only its binned summary, so both CDFs are
    compared at the inner bin edges only: ``max_k |F_train(e_k) - F_window(e_k)|``
    with ``F(x) = P(X < x)``. That is a lower bound on the exact two-sample KS
    statistic, coarser the fewer bins there are (10 quantile bins by default).
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("values is empty: KS needs at least one observation")
    inner = np.asarray(summary.edges[1:-1], dtype=np.float64)
    if inner.size == 0:
        return 0.0  # a constant training feature has one bin: nothing to compare at
    train_cdf = np.cumsum(summary.proportions)[:-1]
    window_cdf = np.searchsorted(v, inner, side="left") / v.size
    return float(np.max(np.abs(train_cdf - window_cdf)))


def _verdict(value: float, moderate: float, major: float) -> Verdict:
    if value >= major:
        return Verdict.MAJOR
    if value >= moderate:
        return Verdict.MODERATE
    return Verdict.NONE


def _feature_drift(
    j: int, summary: FeatureSummary, col: np.ndarray | None, moderate: float, major: float
) -> FeatureDrift:
    if col is None:
        return FeatureDrift(j, None, None, Verdict.INSUFFICIENT_DATA, None, summary.mean, None)
    p = psi(summary.proportions, _bin_counts(summary, col))
    mean = float(col.mean())
    shift = (mean - summary.mean) / summary.std if summary.std > 0 else None
    return FeatureDrift(j, p, ks_statistic(summary, col), _verdict(p, moderate, major), mean, summary.mean, shift)


def _class_drift(manifest: Manifest, predicted: np.ndarray, enough: bool, moderate: float, major: float) -> ClassDrift:
    # Compared as text: a user's model may predict strings, JSON may turn 1 into "1".
    names = [str(c) for c in manifest.classes]
    expected = [float(p) for p in manifest.class_proportions]
    got = np.asarray(predicted).ravel().astype(str)
    counts = np.array([np.count_nonzero(got == name) for name in names], dtype=np.int64)
    n_known = int(counts.sum())
    n_unknown = got.size - n_known
    if not enough or n_known == 0:
        return ClassDrift(names, expected, None, None, Verdict.INSUFFICIENT_DATA, got.size, n_unknown)
    p = psi(expected, counts)
    observed = [float(c) / n_known for c in counts]
    return ClassDrift(names, expected, observed, p, _verdict(p, moderate, major), got.size, n_unknown)


def evaluate(
    manifest: Manifest,
    X: np.ndarray,
    predicted: np.ndarray | None,
    moderate: float = 0.1,
    major: float = 0.25,
    min_samples: int = MIN_SAMPLES,
) -> DriftReport:
    """Per-feature PSI/KS of window ``X`` against the manifest, plus the predicted-class mix.

    The window is ``drifted`` when at least half the features are moderate or worse.
    With fewer than ``min_samples`` rows every verdict is ``insufficient_data``; rows
    of another width than the manifest's (a previous model's) count as none.
    """
    if not manifest.features:
        raise ValueError(f"manifest {manifest.version} has no feature summaries to compare against")
    X = np.asarray(X, dtype=np.float64)
    n = int(X.shape[0]) if X.ndim == 2 else 0
    if n and X.shape[1] != len(manifest.features):
        # Just after a model swap the window can still hold only the old model's rows:
        # none of them describe the served model, so there is nothing to judge yet.
        logger.info(
            "drift window rows have %d features, model %s has %d", X.shape[1], manifest.version, len(manifest.features)
        )
        n = 0
    enough = n >= min_samples
    features = [
        _feature_drift(j, s, X[:, j] if enough else None, moderate, major) for j, s in enumerate(manifest.features)
    ]
    classes = None
    if predicted is not None and manifest.classes and manifest.class_proportions:
        classes = _class_drift(manifest, predicted, enough, moderate, major)
    if not enough:
        status, drifted = Status.INSUFFICIENT_DATA, False
    else:
        n_bad = sum(f.verdict is not Verdict.NONE for f in features)
        drifted = 2 * n_bad >= len(features)
        status = Status.DRIFTED if drifted else Status.STABLE
    return DriftReport(status, drifted, n, min_samples, moderate, major, features, classes)


# --- Redis edge ---------------------------------------------------------------


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
    rows = np.asarray(rows)
    predictions = np.asarray(predictions).ravel()
    if rows.ndim != 2 or rows.shape[0] != predictions.shape[0]:
        raise ValueError(f"rows {rows.shape} and predictions {predictions.shape} do not pair up")
    if window < 1:
        raise ValueError("window must be at least 1")
    if sample_rate <= 0 or rows.shape[0] == 0:
        return 0
    rng = rng if rng is not None else _process_rng()
    n = rows.shape[0]
    k = min(int(rng.binomial(n, min(sample_rate, 1.0))), window)
    if k == 0:
        return 0
    # Sorted so the newest row of the batch also ends up nearest the head.
    idx = np.sort(rng.choice(n, size=k, replace=False))
    sampled = np.ascontiguousarray(rows[idx], dtype=ROW_DTYPE)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(keys.DRIFT_SAMPLES, *(r.tobytes() for r in sampled))
    pipe.lpush(keys.DRIFT_CLASSES, *(str(c).encode() for c in predictions[idx]))
    pipe.ltrim(keys.DRIFT_SAMPLES, 0, window - 1)
    pipe.ltrim(keys.DRIFT_CLASSES, 0, window - 1)
    pipe.execute()
    return k


def _decode_classes(raw: list[bytes]) -> np.ndarray:
    text = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    try:
        return np.array([int(c) for c in text], dtype=np.int64)
    except ValueError:
        return np.array(text, dtype=str)


def decode_window(raw_rows: list[bytes], raw_classes: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """LRANGE results (newest first) -> (X oldest first as float64 (n, n_features), classes).

    After a model swap the window can hold rows of two widths; only rows as wide
    as the newest one are kept, with their classes, so ``evaluate`` sees one model's inputs.
    """
    n = min(len(raw_rows), len(raw_classes))
    if n == 0:
        return np.empty((0, 0), dtype=np.float64), np.empty(0, dtype=np.int64)
    width = len(raw_rows[0])
    keep = [i for i in range(n) if len(raw_rows[i]) == width]
    if len(keep) < n:
        logger.info("drift window: ignoring %d rows of another width (previous model)", n - len(keep))
    keep.reverse()
    X = np.frombuffer(b"".join(raw_rows[i] for i in keep), dtype=ROW_DTYPE).reshape(len(keep), -1)
    return X.astype(np.float64), _decode_classes([raw_classes[i] for i in keep])


def read_window(client: redis.Redis) -> tuple[np.ndarray, np.ndarray]:
    """The shared window as (X, classes); see ``decode_window``."""
    pipe = client.pipeline(transaction=True)
    pipe.lrange(keys.DRIFT_SAMPLES, 0, -1)
    pipe.lrange(keys.DRIFT_CLASSES, 0, -1)
    raw_rows, raw_classes = pipe.execute()
    return decode_window(raw_rows, raw_classes)


async def aread_window(aclient: redis.asyncio.Redis) -> tuple[np.ndarray, np.ndarray]:
    """``read_window`` for the API's asyncio client."""
    pipe = aclient.pipeline(transaction=True)
    pipe.lrange(keys.DRIFT_SAMPLES, 0, -1)
    pipe.lrange(keys.DRIFT_CLASSES, 0, -1)
    raw_rows, raw_classes = await pipe.execute()
    return decode_window(raw_rows, raw_classes)
