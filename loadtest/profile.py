"""Rate profiles: the offered request rate over time, and the arrival times drawn from it.

A profile is a list of phases; within a phase the rate moves linearly from
``rate_start`` to ``rate_end`` (constant when equal). Rates are requests/s,
times are seconds since the start of the run.

Arrival times come from the cumulative rate Λ(t) = ∫ rate: ``uniform`` puts
the k-th arrival where Λ(t) = k + 1/2 (so each second holds its rate, ±1);
``poisson`` puts arrivals at Λ⁻¹ of a unit-rate Poisson process (time
rescaling), which is exact for any piecewise-linear rate.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from loadtest.errors import SpecError

STEP_FACTOR = 3.0
SPIKE_FACTOR = 5.0
RAMP_FACTOR = 3.0
# Where the spike starts (fraction of the run) and how long it lasts: 10% of the run, 1 s to 10 s.
SPIKE_START_FRACTION = 0.4
SPIKE_LENGTH_FRACTION = 0.1
SPIKE_MIN_S = 1.0
SPIKE_MAX_S = 10.0
DEFAULT_DURATION_S = 40.0


class ProfileKind(StrEnum):
    CONSTANT = "constant"
    STEP = "step"
    SPIKE = "spike"
    RAMP = "ramp"
    CSV = "csv"


class Arrivals(StrEnum):
    POISSON = "poisson"
    UNIFORM = "uniform"


@dataclass(frozen=True)
class ProfileSpec:
    """What ``--profile`` said: a kind, an optional factor (``step:4``) or a CSV path (``csv:PATH``)."""

    kind: ProfileKind = ProfileKind.CONSTANT
    factor: float | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind is ProfileKind.CSV:
            return f"csv:{self.path}"
        return self.kind.value if self.factor is None else f"{self.kind.value}:{self.factor:g}"


@dataclass(frozen=True)
class Phase:
    name: str
    start_s: float
    end_s: float
    rate_start: float
    rate_end: float

    @property
    def expected(self) -> float:
        """Expected arrivals in the phase (the integral of its rate)."""
        return (self.rate_start + self.rate_end) / 2 * (self.end_s - self.start_s)


@dataclass(frozen=True)
class Profile:
    """Contiguous phases from 0 to ``duration_s``."""

    phases: tuple[Phase, ...]

    @property
    def duration_s(self) -> float:
        return self.phases[-1].end_s

    def phase_at(self, t: float) -> Phase:
        for p in self.phases:
            if t < p.end_s:
                return p
        return self.phases[-1]

    def rate_at(self, t: float) -> float:
        """Rate in requests/s at ``t`` seconds; 0 outside [0, duration)."""
        if t < 0 or t >= self.duration_s:
            return 0.0
        p = self.phase_at(t)
        frac = (t - p.start_s) / (p.end_s - p.start_s)
        return p.rate_start + (p.rate_end - p.rate_start) * frac

    def expected_between(self, t0: float, t1: float) -> float:
        """Expected arrivals in [t0, t1): the integral of the rate."""
        total = 0.0
        for p in self.phases:
            a, b = max(t0, p.start_s), min(t1, p.end_s)
            if b > a:
                total += (_rate_in(p, a) + _rate_in(p, b)) / 2 * (b - a)
        return total

    def mean_rate(self) -> float:
        return sum(p.expected for p in self.phases) / self.duration_s

    def arrival_times(self, arrivals: Arrivals, rng: np.random.Generator) -> np.ndarray:
        """Sorted scheduled send times (s since start) for the whole profile."""
        total = sum(p.expected for p in self.phases)
        targets = np.arange(0.5, total, 1.0) if arrivals is Arrivals.UNIFORM else _poisson_targets(total, rng)
        return self._invert(targets)

    def _invert(self, targets: np.ndarray) -> np.ndarray:
        """Λ⁻¹ for sorted cumulative-count targets, phase by phase (closed form of a quadratic)."""
        out = np.full(targets.shape, self.duration_s, dtype=float)
        cum = 0.0
        for p in self.phases:
            lo, hi = np.searchsorted(targets, [cum, cum + p.expected], side="left")
            y = targets[lo:hi] - cum
            a, b = p.rate_start, (p.rate_end - p.rate_start) / (p.end_s - p.start_s)
            # a*dt + b*dt²/2 = y  ->  dt = 2y / (a + sqrt(a² + 2by)), stable also for b == 0.
            denom = a + np.sqrt(np.maximum(a * a + 2 * b * y, 0.0))
            dt = np.divide(2 * y, denom, out=np.zeros_like(y), where=denom > 0)
            out[lo:hi] = np.minimum(p.start_s + dt, np.nextafter(p.end_s, p.start_s))
            cum += p.expected
        return out


def _rate_in(p: Phase, t: float) -> float:
    return p.rate_start + (p.rate_end - p.rate_start) * (t - p.start_s) / (p.end_s - p.start_s)


def _poisson_targets(total: float, rng: np.random.Generator) -> np.ndarray:
    """Event times of a unit-rate Poisson process on [0, total)."""
    n = int(total + 6 * math.sqrt(total) + 16)
    t = np.cumsum(rng.exponential(1.0, n))
    while t.size and t[-1] < total:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0, n))])
    return t[t < total]


def parse_profile(text: str) -> ProfileSpec:
    """Parse ``constant``, ``step[:F]``, ``spike[:F]``, ``ramp[:F]`` or ``csv:PATH``."""
    kind_s, sep, arg = text.strip().partition(":")
    try:
        kind = ProfileKind(kind_s.strip().lower())
    except ValueError:
        choices = ", ".join(k.value for k in ProfileKind)
        raise SpecError(f"--profile {text!r}: unknown kind {kind_s!r}; choose one of {choices}") from None
    if kind is ProfileKind.CSV:
        if not arg:
            raise SpecError("--profile csv needs a path: csv:PATH (rows of second,rate)")
        return ProfileSpec(kind, path=Path(arg))
    if not sep:
        return ProfileSpec(kind)
    if kind is ProfileKind.CONSTANT:
        raise SpecError(f"--profile {text!r}: constant takes no factor")
    try:
        factor = float(arg)
    except ValueError:
        raise SpecError(f"--profile {text!r}: factor {arg!r} is not a number") from None
    if not math.isfinite(factor) or factor < 0:
        raise SpecError(f"--profile {text!r}: factor must be a finite number >= 0")
    return ProfileSpec(kind, factor=factor)


def build_profile(spec: ProfileSpec, rate: float, duration_s: float | None) -> Profile:
    """The phases of a profile at base ``rate``; ``duration_s=None`` means the default (or the CSV's length)."""
    if spec.kind is ProfileKind.CSV:
        assert spec.path is not None
        return _csv_profile(spec.path, duration_s)
    d = DEFAULT_DURATION_S if duration_s is None else duration_s
    # Round boundaries to the microsecond (0.4 * 12 is 4.800000000000001) and drop what that empties.
    phases = [
        Phase(p.name, round(p.start_s, 6), round(p.end_s, 6), p.rate_start, p.rate_end)
        for p in _builtin_phases(spec, rate, d)
        if round(p.end_s, 6) > round(p.start_s, 6)
    ]
    if not phases:
        raise SpecError(f"--duration {d:g} s is too short")
    return Profile(tuple(phases))


def _builtin_phases(spec: ProfileSpec, rate: float, d: float) -> tuple[Phase, ...]:
    if d <= 0:
        raise SpecError(f"--duration must be > 0, got {d:g}")
    if spec.kind is ProfileKind.CONSTANT:
        return (Phase("constant", 0.0, d, rate, rate),)
    if spec.kind is ProfileKind.STEP:
        high = rate * (STEP_FACTOR if spec.factor is None else spec.factor)
        return (
            Phase("before", 0.0, d / 3, rate, rate),
            Phase("step", d / 3, 2 * d / 3, high, high),
            Phase("after", 2 * d / 3, d, rate, rate),
        )
    if spec.kind is ProfileKind.SPIKE:
        high = rate * (SPIKE_FACTOR if spec.factor is None else spec.factor)
        start = d * SPIKE_START_FRACTION
        end = min(d, start + min(max(d * SPIKE_LENGTH_FRACTION, SPIKE_MIN_S), SPIKE_MAX_S))
        phases = [Phase("before", 0.0, start, rate, rate), Phase("spike", start, end, high, high)]
        if end < d:
            phases.append(Phase("after", end, d, rate, rate))
        return tuple(phases)
    high = rate * (RAMP_FACTOR if spec.factor is None else spec.factor)
    return (Phase("ramp", 0.0, d, rate, high),)


def _csv_profile(path: Path, duration_s: float | None) -> Profile:
    """Rows ``second,rate``: each rate holds until the next row's second; the last one for 1 s or to --duration."""
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"--profile csv:{path}: cannot read ({e.strerror})") from None
    points: list[tuple[float, float]] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            second, rate = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            if not points and lineno == 1:  # a header row
                continue
            raise SpecError(f"--profile csv:{path} line {lineno}: expected 'second,rate', got {row!r}") from None
        if not (math.isfinite(second) and math.isfinite(rate)) or second < 0 or rate < 0:
            raise SpecError(f"--profile csv:{path} line {lineno}: second and rate must be finite and >= 0")
        if points and second <= points[-1][0]:
            raise SpecError(f"--profile csv:{path} line {lineno}: seconds must increase")
        points.append((second, rate))
    if not points:
        raise SpecError(f"--profile csv:{path}: no 'second,rate' rows")
    end = points[-1][0] + 1.0 if duration_s is None else duration_s
    if end <= 0:
        raise SpecError(f"--duration must be > 0, got {end:g}")
    if points[0][0] > 0:
        points.insert(0, (0.0, 0.0))
    phases: list[Phase] = []
    for i, (second, rate) in enumerate(points):
        stop = min(points[i + 1][0] if i + 1 < len(points) else end, end)
        if second >= end:
            break
        if phases and phases[-1].rate_start == rate:  # merge equal neighbours: fewer, wider phases
            phases[-1] = Phase(phases[-1].name, phases[-1].start_s, stop, rate, rate)
        else:
            phases.append(Phase(f"{rate:g}/s", second, stop, rate, rate))
    return Profile(tuple(phases))
