"""Input drift: a shared window of recent inputs judged against the served model's training data.

Modules: ``stats`` (PSI, KS and their p-values on the manifest's bins), ``evaluate`` (verdicts per
feature, for the predicted-class mix and the window, weighted by the model's permutation importance),
``report`` (the records and their JSON), ``window`` (the Redis edge: workers and the API write, the
route and the exporter read), ``buffer`` (a worker process's samples, pushed every half second),
``cache`` (one evaluation shared for a few seconds).
"""

from __future__ import annotations

from inferpool.drift.evaluate import MIN_SAMPLES, REFUSED_MIN_ROWS, Refusals, evaluate
from inferpool.drift.report import ClassDrift, DriftReport, FeatureDrift, Kind, Policy, Status, Verdict
from inferpool.drift.stats import PSI_EPS, chi2_pvalue, ks_pvalue, ks_statistic, psi, stuck_pvalue
from inferpool.drift.window import (
    REFUSED,
    ROW_DTYPE,
    Window,
    aread,
    aread_window,
    arecord_refusals,
    decode,
    decode_window,
    read,
    read_window,
    record,
)
from inferpool.settings import Settings

__all__ = [
    "MIN_SAMPLES", "PSI_EPS", "REFUSED", "REFUSED_MIN_ROWS", "ROW_DTYPE",
    "ClassDrift", "DriftReport", "FeatureDrift", "Kind", "Policy", "Refusals", "Status", "Verdict", "Window",
    "aread", "aread_window", "arecord_refusals", "chi2_pvalue", "decode", "decode_window", "evaluate",
    "ks_pvalue", "ks_statistic", "policy_of", "psi", "read", "read_window", "record", "stuck_pvalue",
]  # fmt: skip


def policy_of(s: Settings) -> Policy:
    """The verdicts' thresholds as configured (``INFERPOOL_DRIFT_*``)."""
    return Policy(
        psi_moderate=s.drift_psi_moderate,
        psi_major=s.drift_psi_major,
        alpha_moderate=s.drift_alpha_moderate,
        alpha_major=s.drift_alpha_major,
        min_samples=s.drift_min_samples,
        weighted_share=s.drift_weighted_share,
        top_importance=s.drift_top_importance,
        refused_moderate=s.drift_refused_moderate,
        refused_major=s.drift_refused_major,
    )
