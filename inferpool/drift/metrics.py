"""Drift and concept-drift metric families for the cluster exporter (``inferpool.exporter``).

Built fresh on each scrape from one report, like the exporter's other families: a feature that leaves
the model leaves the exposition. Per feature, a gauge each for the statistics, its importance and
whether it is among the important ones, so an alert can page on one important feature that is major
(``InferpoolImportantFeatureDrift``) even while the dataset verdict holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from inferpool import feedback
from inferpool.drift.report import DriftReport, Verdict
from inferpool.model_store import Manifest
from inferpool.settings import Settings

VERDICTS = tuple(v.value for v in Verdict)


def _per_feature(name: str, help_: str, labels: Sequence[str] = ("feature",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, labels=list(labels))


def drift_families(report: DriftReport | None, s: Settings) -> Iterator[Metric]:
    """Every drift family; only TYPE lines (no samples) when there is no report (no model yet)."""
    samples = GaugeMetricFamily("inferpool_drift_window_rows", "Predicted rows in the shared drift window")
    refused = GaugeMetricFamily("inferpool_drift_window_refused_rows", "Rows refused at the API in the drift window")
    psi = _per_feature("inferpool_drift_feature_psi", "Population stability index per feature")
    ks = _per_feature("inferpool_drift_feature_ks", "Kolmogorov-Smirnov statistic per feature")
    pvalue = _per_feature(
        "inferpool_drift_feature_pvalue", "p-value of the window against training, per feature", ("feature", "test")
    )
    importance = _per_feature("inferpool_drift_feature_importance_ratio", "Share of the model's permutation importance")
    important = _per_feature(
        "inferpool_drift_feature_important", "1 for the fewest features carrying drift_top_importance of it"
    )
    impact = _per_feature("inferpool_drift_feature_impact", "Importance x drift (units of the major threshold)")
    refused_share = _per_feature("inferpool_drift_feature_refused_ratio", "Share of window rows refused for it")
    verdict = _per_feature(
        "inferpool_drift_feature_verdict", "1 for each feature's current verdict", ("feature", "verdict")
    )
    n_bad = GaugeMetricFamily("inferpool_drift_drifted_features", "Features whose verdict is moderate or major")
    share = GaugeMetricFamily(
        "inferpool_drift_drifted_importance_ratio", "Share of the importance carried by moderate or major features"
    )
    dataset = GaugeMetricFamily("inferpool_drift_dataset_drifted", "1 when the window's verdict is drifted")
    classes = GaugeMetricFamily("inferpool_drift_predictions_psi", "PSI of the predicted-class mix against training")
    classes_verdict = GaugeMetricFamily(
        "inferpool_drift_predictions_verdict", "1 for the predicted-class mix's verdict", labels=["verdict"]
    )
    thresholds = GaugeMetricFamily("inferpool_drift_psi_threshold", "PSI thresholds of the verdicts", labels=["level"])
    thresholds.add_metric(["moderate"], s.drift_psi_moderate)
    thresholds.add_metric(["major"], s.drift_psi_major)
    if report is not None:
        samples.add_metric([], report.n_samples)
        refused.add_metric([], report.n_refused)
        for f in report.features:
            label = [str(f.index)]
            importance.add_metric(label, f.importance)
            important.add_metric(label, 1 if f.important else 0)
            impact.add_metric(label, f.impact)
            for fam, v in ((psi, f.psi), (ks, f.ks), (refused_share, f.refused_share)):
                if v is not None:
                    fam.add_metric(label, v)
            for test, p in (("chi2", f.p_chi2), ("ks", f.p_ks)):
                if p is not None:
                    pvalue.add_metric([*label, test], p)
            for verdict_name in VERDICTS:
                verdict.add_metric([*label, verdict_name], 1 if f.verdict.value == verdict_name else 0)
        n_bad.add_metric([], report.n_features_drifted)
        if report.weighted_share is not None:
            share.add_metric([], report.weighted_share)
        dataset.add_metric([], 1 if report.drifted else 0)
        mix = report.predictions
        if mix is not None:
            if mix.psi is not None:
                classes.add_metric([], mix.psi)
            for verdict_name in VERDICTS:
                classes_verdict.add_metric([verdict_name], 1 if mix.verdict.value == verdict_name else 0)
    yield from (samples, refused, psi, ks, pvalue, importance, important, impact, refused_share, verdict)
    yield from (n_bad, share, dataset, classes, classes_verdict, thresholds)


def concept_families(
    newest_first: list[feedback.FeedbackEntry], manifest: Manifest | None, s: Settings
) -> Iterator[Metric]:
    """Realised accuracy over the newest labels against the held-out score, and the concept-drift verdict."""
    realised = GaugeMetricFamily(
        "inferpool_accuracy_realised_ratio",
        "Accuracy of the newest labelled predictions (INFERPOOL_DRIFT_ACCURACY_WINDOW)",
    )
    training = GaugeMetricFamily(
        "inferpool_accuracy_training_ratio", "Held-out accuracy recorded at train/register time"
    )
    labels = GaugeMetricFamily("inferpool_accuracy_labels", "Labelled predictions the realised accuracy is over")
    drifted = GaugeMetricFamily(
        "inferpool_concept_drifted", "1 when realised accuracy is significantly below the held-out score"
    )
    if manifest is not None:
        c = feedback.judge(newest_first, manifest, s)
        labels.add_metric([], c.n)
        if c.accuracy is not None:
            realised.add_metric([], c.accuracy)
        if c.training_score is not None:
            training.add_metric([], c.training_score)
        drifted.add_metric([], 1 if c.drifted else 0)
    yield from (realised, training, labels, drifted)
