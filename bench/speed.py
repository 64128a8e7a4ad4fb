"""The machine's speed, printed beside every absolute time a benchmark reports (machines here differ 2.5x)."""

from __future__ import annotations

import time


def loop_speed_s() -> float:
    """Seconds of a plain 10M-iteration Python loop inside a function (``bench.loadgen.machine_speed`` times
    the same loop at module level, as FIELD-NOTES quotes it: about 2.5x slower)."""
    t0 = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - t0
