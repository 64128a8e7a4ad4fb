"""Arrivals and work for the fleet model: rate profiles, Poisson arrival times, work per request.

A profile is a rate over time (requests per second); arrivals are a non-homogeneous Poisson process drawn
by thinning (Lewis and Shedler): candidates at the profile's peak rate, each kept with probability
rate(t) / peak. Work per request comes from a mix (the tutorial's 0/50/200 ms at .6/.25/.15) or a
bounded Pareto (heavy-tailed: most requests short, a few very long), both in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TUTORIAL_MIX: tuple[tuple[float, float], ...] = ((0.0, 0.6), (50.0, 0.25), (200.0, 0.15))  # (work ms, share)
FLASH_FACTOR = 10.0
FLASH_RISE_S = 10.0


@dataclass(frozen=True, slots=True)
class Step:
    """Piecewise-constant rates: ``phases`` of (seconds, req/s)."""

    phases: tuple[tuple[float, float], ...]

    def rate(self, t_s: float) -> float:
        end = 0.0
        for seconds, rate in self.phases:
            end += seconds
            if t_s < end:
                return rate
        return 0.0

    @property
    def duration_s(self) -> float:
        return sum(s for s, _ in self.phases)

    @property
    def peak(self) -> float:
        return max(r for _, r in self.phases)


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A day's cycle compressed into ``period_s``: the rate swings +-``amplitude`` around ``mean`` (trough at 0)."""

    mean: float
    amplitude: float = 0.6  # share of the mean
    period_s: float = 600.0
    duration_s: float = 600.0

    def rate(self, t_s: float) -> float:
        return self.mean * (1.0 - self.amplitude * math.cos(2.0 * math.pi * t_s / self.period_s))

    @property
    def peak(self) -> float:
        return self.mean * (1.0 + self.amplitude)


@dataclass(frozen=True, slots=True)
class FlashCrowd:
    """``base`` req/s, rising linearly to ``factor`` x base over ``rise_s`` from ``at_s``, held ``hold_s``, back."""

    base: float
    at_s: float = 60.0
    hold_s: float = 60.0
    duration_s: float = 240.0
    factor: float = FLASH_FACTOR
    rise_s: float = FLASH_RISE_S

    def rate(self, t_s: float) -> float:
        top = self.base * self.factor
        if t_s < self.at_s or t_s >= self.at_s + self.rise_s + self.hold_s:
            return self.base
        if t_s < self.at_s + self.rise_s:
            return self.base + (top - self.base) * (t_s - self.at_s) / self.rise_s
        return top

    @property
    def peak(self) -> float:
        return self.base * self.factor


Profile = Step | Diurnal | FlashCrowd


def arrival_times(profile: Profile, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (s) of a Poisson process whose rate follows ``profile``, by thinning."""
    peak, duration = profile.peak, profile.duration_s
    if peak <= 0:
        return np.empty(0)
    n = rng.poisson(peak * duration)
    cand = np.sort(rng.uniform(0.0, duration, n))
    rates = np.fromiter((profile.rate(t) for t in cand), float, len(cand))
    return cand[rng.uniform(0.0, peak, len(cand)) < rates]


def mix_work_ms(n: int, rng: np.random.Generator, mix: Sequence[tuple[float, float]] = TUTORIAL_MIX) -> np.ndarray:
    works = np.array([w for w, _ in mix])
    shares = np.array([p for _, p in mix])
    return works[rng.choice(len(mix), size=n, p=shares / shares.sum())]


def pareto_work_ms(
    n: int, rng: np.random.Generator, alpha: float = 1.5, min_ms: float = 20.0, max_ms: float = 10_000.0,
    light_share: float = 0.6,
) -> np.ndarray:  # fmt: skip
    """Heavy-tailed work: ``light_share`` of requests have none; the rest a Pareto(alpha) from ``min_ms``, capped
    at ``max_ms`` (the product's ``INFERPOOL_MAX_WORK_MS``). With alpha 1.5 the mean is 3x the minimum and a few
    requests in a thousand take over a second."""
    heavy = rng.uniform(size=n) >= light_share
    pareto = min_ms * (1.0 + rng.pareto(alpha, size=n))
    return np.where(heavy, np.minimum(pareto, max_ms), 0.0)
