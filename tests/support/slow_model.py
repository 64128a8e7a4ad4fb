"""User models slower than their forest: a fixed delay (to kill a worker mid-batch) or a ratio (a slow candidate)."""

from __future__ import annotations

import os
import time

import numpy as np


class SlowModel:
    def __init__(self, inner, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.classes_ = inner.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        # A worker started with TEST_MODEL_DELAY_S set takes that long instead: one model dir, two speeds.
        time.sleep(float(os.environ.get("TEST_MODEL_DELAY_S", self.delay_s)))
        return self.inner.predict(X)


class ScaledSlowModel:
    """A user model that takes ``factor`` times its inner model's time: slower by a ratio on any machine.

    A fixed delay is a smaller ratio where the forest itself is slow (12 ms on a 20 ms forest is 1.6x, not 3x),
    so a test that means "3x slower" must not depend on how fast this session's machine is.
    """

    def __init__(self, inner, factor: float) -> None:
        self.inner = inner
        self.factor = factor
        self.classes_ = inner.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.inner.predict(X)
        time.sleep((self.factor - 1) * (time.perf_counter() - t))
        return out
