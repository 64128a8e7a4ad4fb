"""A user model whose predict takes a fixed time: lets a test kill a worker in the middle of a batch."""

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
