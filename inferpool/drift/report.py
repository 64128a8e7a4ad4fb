"""The drift report: verdicts per feature and for the window, as records and as JSON.

``DriftReport.to_json`` is the body of ``GET /v1/monitoring/drift`` (and of the short-lived cache the
route and the exporter share); ``from_json`` reads it back, so a cached report is the same record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """Drift of one feature (or of the predicted-class mix)."""

    NONE = "none"
    MODERATE = "moderate"
    MAJOR = "major"
    INSUFFICIENT_DATA = "insufficient_data"


class Status(StrEnum):
    """Verdict on the whole window."""

    STABLE = "stable"
    DRIFTED = "drifted"
    INSUFFICIENT_DATA = "insufficient_data"


class Kind(StrEnum):
    """What a drifted feature looks like, so a reader knows where to look first."""

    REFUSED = "refused"  # its values are refused at the API (missing, not finite, beyond float32)
    STUCK = "stuck"  # one value in every row: a broken sensor or a hard-coded default
    MEAN_SHIFT = "mean_shift"
    SCALE = "scale"  # spread changed, centre did not
    SHAPE = "shape"  # none of the above: the histogram moved some other way


@dataclass(frozen=True)
class Policy:
    """Every threshold of the verdicts (``Settings.drift_*``; the defaults are the settings' defaults).

    A feature is ``moderate`` when its bins' p-value is under ``alpha_moderate`` AND its PSI reaches
    ``psi_moderate`` (``major``: ``alpha_major`` and ``psi_major``): the p-value says the change is not
    noise of this window size, the PSI that it is large enough to matter.
    """

    psi_moderate: float = 0.1
    psi_major: float = 0.25
    alpha_moderate: float = 0.01
    alpha_major: float = 0.001
    min_samples: int = 50  # evaluate.MIN_SAMPLES
    # Dataset verdict: drifted when the features drifting carry this share of the importance...
    weighted_share: float = 0.3
    # ...or when one of the features that together carry this share of the importance is major.
    top_importance: float = 0.8
    # Share of the window's rows refused at the API for a feature.
    refused_moderate: float = 0.01
    refused_major: float = 0.05

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureDrift:
    index: int
    # Share of the model's permutation importance (sums to 1 over features; uniform when unknown).
    importance: float
    # Among the fewest features that together carry Policy.top_importance of the importance.
    important: bool
    # importance x severity, severity being drift in units of the major threshold (PSI / psi_major or
    # refused share / refused_major, the larger): the report is sorted by it.
    impact: float
    verdict: Verdict
    kind: Kind | None
    psi: float | None
    ks: float | None
    p_chi2: float | None
    p_ks: float | None
    refused: int
    refused_share: float | None
    mean: float | None
    train_mean: float
    # (window mean - training mean) / training std: says which way and how far.
    mean_shift_std: float | None
    # window std / training std: a scale change without a mean shift shows here.
    std_ratio: float | None


@dataclass(frozen=True)
class ClassDrift:
    classes: list[str]
    expected: list[float]
    observed: list[float] | None
    psi: float | None
    p_value: float | None
    verdict: Verdict
    n: int
    # Predictions naming a class the manifest does not list (left out of the PSI).
    n_unknown: int


@dataclass(frozen=True)
class DriftReport:
    status: Status
    drifted: bool
    # Why the window is drifted, one sentence each; empty when it is not.
    reasons: list[str]
    model_version: str
    n_samples: int  # predicted rows in the window
    n_refused: int  # refused rows in the window
    policy: Policy
    # Where the importance came from (manifest), or None: every feature weighs the same.
    importance_source: str | None
    # Importance carried by the features whose verdict is moderate or major.
    weighted_share: float | None
    features: list[FeatureDrift]  # most impact first
    predictions: ClassDrift | None

    @property
    def n_features_drifted(self) -> int:
        return sum(f.verdict in (Verdict.MODERATE, Verdict.MAJOR) for f in self.features)

    def feature(self, index: int) -> FeatureDrift:
        return next(f for f in self.features if f.index == index)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (str, int, float, bool, None, lists) for ``GET /v1/monitoring/drift``."""
        d = asdict(self)  # enums stay enum members (StrEnum: they serialise as their value)
        p = self.policy
        d.pop("policy")
        d["min_samples"] = p.min_samples
        d["thresholds"] = p.to_json()
        d["n_features"] = len(self.features)
        d["n_features_drifted"] = self.n_features_drifted
        return _plain(d)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DriftReport:
        feats = [
            FeatureDrift(**{**f, "verdict": Verdict(f["verdict"]), "kind": Kind(f["kind"]) if f["kind"] else None})
            for f in d["features"]
        ]
        p = d["predictions"]
        preds = None if p is None else ClassDrift(**{**p, "verdict": Verdict(p["verdict"])})
        own = {f.name for f in fields(cls)} - {"policy", "features", "predictions", "status"}
        return cls(
            **{k: d[k] for k in own},
            status=Status(d["status"]),
            policy=Policy(**d["thresholds"]),
            features=feats,
            predictions=preds,
        )


def _plain(value: Any) -> Any:
    """Enum members as their text, recursively: orjson and json then see only plain types."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
