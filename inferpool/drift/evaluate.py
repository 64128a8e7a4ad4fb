"""Verdicts: each feature against its training bins, the predicted-class mix, and the window as a whole.

Pure: a window (rows, their predictions, refusals counted per feature) and a manifest in, a
``DriftReport`` out. A feature is judged on three signals, the worst one wins: its distribution (bins'
chi-square and KS p-values gated by PSI, see ``Policy``), a window stuck at one value, and the share of
rows refused at the API for it. The window is drifted when the features that drift carry a large
enough share of the model's permutation importance, when a feature among those carrying most of it is
major, or when the predicted-class mix is major; a broken input the model leans on is never "stable"
because fewer than half the features moved.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferpool.drift.report import ClassDrift, DriftReport, FeatureDrift, Kind, Policy, Status, Verdict
from inferpool.drift.stats import bin_counts, chi2_pvalue, ks_pvalue, ks_statistic, psi, stuck_pvalue
from inferpool.model_store import FeatureSummary, Manifest

logger = logging.getLogger(__name__)

# Below this many window rows no verdict at all: the chi-square's expected count per bin (10 bins) is
# under 5, where its p-values stop being trustworthy. The p-values, not this floor, keep small windows
# from reading noise as drift (bench/drift_calibration.py measures it).
MIN_SAMPLES = 50
# Fewer refused rows than this never make a verdict: a handful is one client's bug, not a broken input.
REFUSED_MIN_ROWS = 5
# What a drifted feature "looks like" (Kind): a mean moved by this many training stds, else a std ratio
# beyond this factor either way.
MEAN_SHIFT_STD = 0.25
SCALE_RATIO = 1.25
_RANK = {Verdict.NONE: 0, Verdict.MODERATE: 1, Verdict.MAJOR: 2}


@dataclass(frozen=True)
class Refusals:
    """Rows of the window refused at the API, and how many named each feature (a row can name several)."""

    rows: int = 0
    by_feature: dict[int, int] = field(default_factory=dict)


def _gate(p: float, value: float, policy: Policy) -> Verdict:
    if p < policy.alpha_major and value >= policy.psi_major:
        return Verdict.MAJOR
    if p < policy.alpha_moderate and value >= policy.psi_moderate:
        return Verdict.MODERATE
    return Verdict.NONE


def _refused_verdict(count: int, share: float, policy: Policy) -> Verdict:
    if count < REFUSED_MIN_ROWS:
        return Verdict.NONE
    if share >= policy.refused_major:
        return Verdict.MAJOR
    return Verdict.MODERATE if share >= policy.refused_moderate else Verdict.NONE


def _worst(*verdicts: Verdict) -> Verdict:
    known = [v for v in verdicts if v is not Verdict.INSUFFICIENT_DATA]
    best = max(known, key=_RANK.__getitem__, default=Verdict.NONE)
    if best is Verdict.NONE and len(known) < len(verdicts):
        return Verdict.INSUFFICIENT_DATA
    return best


def _kind(verdict: Verdict, refused: Verdict, stuck: bool, shift: float | None, ratio: float | None) -> Kind | None:
    if verdict not in (Verdict.MODERATE, Verdict.MAJOR):
        return None
    if refused is verdict:
        return Kind.REFUSED
    if stuck:
        return Kind.STUCK
    if shift is not None and abs(shift) >= MEAN_SHIFT_STD:
        return Kind.MEAN_SHIFT
    if ratio is not None and not 1 / SCALE_RATIO < ratio < SCALE_RATIO:
        return Kind.SCALE
    return Kind.SHAPE


@dataclass(frozen=True)
class _Column:
    """The distribution half of one feature's verdict (None everywhere with too few rows)."""

    verdict: Verdict = Verdict.INSUFFICIENT_DATA
    psi: float | None = None
    ks: float | None = None
    p_chi2: float | None = None
    p_ks: float | None = None
    stuck: bool = False
    mean: float | None = None
    shift: float | None = None
    ratio: float | None = None


def _column(s: FeatureSummary, col: np.ndarray, n_train: int | None, policy: Policy) -> _Column:
    counts = bin_counts(s, col)
    value, ks = psi(s.proportions, counts), ks_statistic(s, col)
    p_chi2, p_ks = chi2_pvalue(s.proportions, counts, n_train), ks_pvalue(ks, col.size, n_train)
    # Two tests of one question: Bonferroni keeps the pair's false-alarm rate at alpha.
    verdict = _gate(min(1.0, 2 * min(p_chi2, p_ks)), value, policy)
    p_stuck = stuck_pvalue(s, col)
    stuck = p_stuck is not None and p_stuck < policy.alpha_major
    if stuck:
        verdict = Verdict.MAJOR
    mean = float(col.mean())
    shift = (mean - s.mean) / s.std if s.std > 0 else None
    ratio = float(col.std()) / s.std if s.std > 0 else None
    return _Column(verdict, value, ks, p_chi2, p_ks, stuck, mean, shift, ratio)


def _weights(manifest: Manifest) -> tuple[np.ndarray, str | None]:
    """Importance shares (sum 1); uniform, with no source, when the manifest has none or all are <= 0."""
    n = len(manifest.features)
    h = manifest.held_out
    if h is not None and len(h.importance) == n:
        w = np.clip(np.asarray(h.importance, dtype=np.float64), 0.0, None)
        if w.sum() > 0:
            return w / w.sum(), f"permutation importance, {h.method} on {h.n_rows} rows"
    return np.full(n, 1.0 / n), None


def _top_set(w: np.ndarray, share: float) -> set[int]:
    """The fewest features whose importance adds up to ``share`` (ties broken by index)."""
    order = np.argsort(-w, kind="stable")
    k = int(np.searchsorted(np.cumsum(w[order]), share - 1e-12)) + 1
    return {int(j) for j in order[: min(k, w.size)]}


def _class_drift(manifest: Manifest, predicted: np.ndarray, enough: bool, policy: Policy) -> ClassDrift:
    # Compared as text: a user's model may predict strings, JSON may turn 1 into "1".
    names = [str(c) for c in manifest.classes]
    h = manifest.held_out
    n_ref: int | None
    if h is not None and len(h.predicted_proportions) == len(names):
        # The mix the model predicts on unseen rows, not the label mix: a model's own bias is not drift.
        expected, n_ref = list(h.predicted_proportions), h.n_rows
    else:
        expected, n_ref = [float(p) for p in manifest.class_proportions], manifest.n_train
    got = np.asarray(predicted).ravel().astype(str)
    counts = np.array([np.count_nonzero(got == name) for name in names], dtype=np.int64)
    n_known = int(counts.sum())
    n_unknown = got.size - n_known
    if not enough or n_known == 0:
        return ClassDrift(names, expected, None, None, None, Verdict.INSUFFICIENT_DATA, got.size, n_unknown)
    value, p = psi(expected, counts), chi2_pvalue(expected, counts, n_ref)
    observed = [float(c) / n_known for c in counts]
    return ClassDrift(names, expected, observed, value, p, _gate(p, value, policy), got.size, n_unknown)


def _policy(policy: Policy | None, moderate: float | None, major: float | None, min_samples: int | None) -> Policy:
    p = policy or Policy(min_samples=MIN_SAMPLES)
    overrides: dict[str, Any] = {"psi_moderate": moderate, "psi_major": major, "min_samples": min_samples}
    return dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})


def evaluate(
    manifest: Manifest,
    X: np.ndarray,
    predicted: np.ndarray | None,
    moderate: float | None = None,
    major: float | None = None,
    min_samples: int | None = None,
    *,
    policy: Policy | None = None,
    refused: Refusals | None = None,
) -> DriftReport:
    """Judge window ``X`` (rows oldest first), its ``predicted`` classes and its ``refused`` rows.

    ``moderate``/``major``/``min_samples`` override the policy's PSI thresholds and row floor. With
    fewer than ``min_samples`` rows the distribution verdicts are ``insufficient_data`` (refusals are
    still judged when the window holds enough rows counting them); rows of another width than the
    manifest's (a previous model's) count as none.
    """
    if not manifest.features:
        raise ValueError(f"manifest {manifest.version} has no feature summaries to compare against")
    pol = _policy(policy, moderate, major, min_samples)
    ref = refused or Refusals()
    X = np.asarray(X, dtype=np.float64)
    n = int(X.shape[0]) if X.ndim == 2 else 0
    if n and X.shape[1] != len(manifest.features):
        # Just after a model swap the window can still hold only the old model's rows:
        # none of them describe the served model, so there is nothing to judge yet.
        logger.info(
            "drift window rows have %d features, model %s has %d", X.shape[1], manifest.version, len(manifest.features)
        )
        n = 0
    enough_rows = n >= pol.min_samples
    entries = n + ref.rows
    enough_entries = entries >= pol.min_samples
    w, source = _weights(manifest)
    top = _top_set(w, pol.top_importance)
    features = []
    for j, s in enumerate(manifest.features):
        c = _column(s, X[:, j], manifest.n_train, pol) if enough_rows else _Column()
        count = ref.by_feature.get(j, 0)
        share = count / entries if enough_entries else None
        rv = _refused_verdict(count, share, pol) if share is not None else Verdict.INSUFFICIENT_DATA
        verdict = _worst(c.verdict, rv)
        kind = _kind(verdict, rv, c.stuck, c.shift, c.ratio)
        impact = float(w[j]) * max((c.psi or 0.0) / pol.psi_major, (share or 0.0) / pol.refused_major)
        features.append(
            FeatureDrift(
                j, float(w[j]), j in top, impact, verdict, kind,
                c.psi, c.ks, c.p_chi2, c.p_ks, count, share, c.mean, s.mean, c.shift, c.ratio,
            )
        )  # fmt: skip
    # Most impact first; among equals (features the model ignores) the worst verdict, then the largest PSI.
    features.sort(key=lambda f: (-f.impact, -_RANK.get(f.verdict, -1), -(f.psi or 0.0), f.index))
    classes = None
    if predicted is not None and manifest.classes and manifest.class_proportions:
        classes = _class_drift(manifest, predicted, enough_rows, pol)
    return _dataset(manifest, n, ref.rows, enough_rows, enough_entries, pol, source, features, classes)


def _dataset(
    manifest: Manifest,
    n: int,
    n_refused: int,
    enough_rows: bool,
    enough_entries: bool,
    pol: Policy,
    source: str | None,
    features: list[FeatureDrift],
    classes: ClassDrift | None,
) -> DriftReport:
    reasons: list[str] = []
    share = None
    if enough_entries:
        share = float(sum(f.importance for f in features if f.verdict in (Verdict.MODERATE, Verdict.MAJOR)))
        for f in features:
            if f.important and f.verdict is Verdict.MAJOR:
                reasons.append(
                    f"feature {f.index} is major ({f.kind}) and among the features carrying "
                    f"{pol.top_importance:.0%} of the importance (its share {f.importance:.1%})"
                )
        if share >= pol.weighted_share:
            reasons.append(
                f"drifting features carry {share:.1%} of the importance (threshold {pol.weighted_share:.0%})"
            )
        if classes is not None and classes.verdict is Verdict.MAJOR:
            reasons.append(f"predicted-class mix is major (PSI {classes.psi:.2f})")
    if reasons:
        status = Status.DRIFTED
    elif enough_rows:
        status = Status.STABLE
    else:
        status = Status.INSUFFICIENT_DATA
    return DriftReport(
        status, bool(reasons), reasons, manifest.version, n, n_refused, pol, source, share, features, classes
    )
