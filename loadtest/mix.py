"""The request mix: how much simulated work (``work_ms``) each request asks for, with what probability.

Written on the command line as ``WORK_MS:PROBABILITY`` pairs, e.g. ``0:0.6,50:0.25,200:0.15``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadtest.errors import SpecError

DEFAULT_MIX = "0:0.6,50:0.25,200:0.15"
# Probabilities are typed by hand: accept rounding like 0.33+0.33+0.33, refuse real mistakes.
PROBABILITY_SUM_TOLERANCE = 0.011


@dataclass(frozen=True)
class MixEntry:
    work_ms: int
    probability: float


@dataclass(frozen=True)
class Mix:
    """Entries with distinct ``work_ms`` whose probabilities sum to 1 (normalised on parse)."""

    entries: tuple[MixEntry, ...]

    def __str__(self) -> str:
        return ",".join(f"{e.work_ms}:{e.probability:g}" for e in self.entries)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` work values in ms (int64), drawn independently with the mix's probabilities."""
        work = np.array([e.work_ms for e in self.entries], dtype=np.int64)
        p = np.array([e.probability for e in self.entries], dtype=float)
        return rng.choice(work, size=n, p=p / p.sum())


def parse_mix(text: str) -> Mix:
    """Parse ``"0:0.6,50:0.25,200:0.15"``; raises SpecError naming the bad part."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    if not pairs:
        raise SpecError(f"--mix {text!r}: empty; expected WORK_MS:PROBABILITY pairs like {DEFAULT_MIX}")
    entries: list[MixEntry] = []
    for pair in pairs:
        work_s, sep, prob_s = pair.partition(":")
        if not sep:
            raise SpecError(f"--mix: {pair!r} has no ':'; expected WORK_MS:PROBABILITY like 50:0.25")
        try:
            work = int(work_s.strip())
        except ValueError:
            raise SpecError(f"--mix: work {work_s.strip()!r} in {pair!r} is not a whole number of ms") from None
        try:
            prob = float(prob_s.strip())
        except ValueError:
            raise SpecError(f"--mix: probability {prob_s.strip()!r} in {pair!r} is not a number") from None
        if work < 0:
            raise SpecError(f"--mix: work {work} ms in {pair!r} is negative")
        if not math.isfinite(prob) or not 0 < prob <= 1:
            raise SpecError(f"--mix: probability {prob_s.strip()} in {pair!r} must be in (0, 1]")
        if any(e.work_ms == work for e in entries):
            raise SpecError(f"--mix: work {work} ms appears twice")
        entries.append(MixEntry(work, prob))
    total = sum(e.probability for e in entries)
    if abs(total - 1) > PROBABILITY_SUM_TOLERANCE:
        raise SpecError(f"--mix {text!r}: probabilities sum to {total:g}, not 1")
    return Mix(tuple(MixEntry(e.work_ms, e.probability / total) for e in entries))
