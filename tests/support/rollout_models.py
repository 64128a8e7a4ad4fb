"""Candidate models for rollout tests: one that fails on marked rows, one that disagrees on a known share.

They live here (not in a test file) so that worker processes can unpickle them: the tests run from the
repository root, which is on every spawned process's path.
"""

from __future__ import annotations

import numpy as np

# A first feature of exactly this value marks a row the failing candidate refuses (never in training data).
POISON = 1234.5


class FailingModel:
    """The stable model's answers, except that any batch holding a marked row raises."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        if np.any(np.asarray(X)[:, 0] == np.float32(POISON)):
            raise ValueError("candidate refuses a marked row")
        return self.inner.predict(X)


def flip_mask(X: np.ndarray, rate: float) -> np.ndarray:
    """Rows the disagreeing candidate answers differently: a fixed pseudo-random share ``rate`` of rows."""
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    u = np.abs(np.sin(X[:, 1] * 12.9898 + X[:, 2] * 78.233) * 43758.5453) % 1.0
    return u < rate


class DisagreeingModel:
    """The stable model with its binary label flipped on ``flip_mask`` rows: a known disagreement rate."""

    def __init__(self, inner, rate: float) -> None:
        self.inner = inner
        self.rate = rate
        self.classes_ = inner.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        y = np.asarray(self.inner.predict(X))
        return np.where(flip_mask(X, self.rate), 1 - y, y)
