"""Drift verdicts, measured: false alarms on unshifted data and the rows needed to see a 1-std shift.

A pure simulation (no Redis, no workers): the model is trained on 500 rows of a ``make_classification``
population, as the reference model is, and registered the way ``inferpool train`` does it (bins,
held-out importance). Windows are then drawn fresh from the same population, so the training bins are
a sample too, as in production, and judged with ``inferpool.drift.evaluate`` and the default settings.

    python -m bench.drift_calibration [--windows 300] [--seed 0] [--json out.json]

Reported:
* false alarms per feature per evaluation (moderate-or-worse, and major) at several window sizes, for
  the shipped rule and, for contrast, for PSI >= 0.1 alone and for one-sample tests (training bins
  taken as exact); and how often the whole window reads drifted;
* the same on windows resampled from the training rows themselves (what the tests feed);
* the rows needed for the window to read drifted, with the most important feature named first, in
  95 % of windows, when that feature's mean moves by 1 training standard deviation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from inferpool import drift, model_store
from inferpool.settings import Settings

N_TRAIN = 500
N_FEATURES = 20
POPULATION = 200_000
SIZES = (50, 100, 300, 1000, 2000)
DETECT_SIZES = (10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)
DETECT_POWER = 0.95
# A live window: WINDOW rows of which the newest k arrived after the shift.
WINDOW = 2000
MIXED_NEWEST = (100, 200, 300, 400, 500, 600, 700, 800, 1000)


def build(seed: int) -> tuple[Any, model_store.Manifest, np.ndarray, np.ndarray]:
    """(model, manifest, training rows, fresh population rows) with the reference model's recipe."""
    X, y = make_classification(n_samples=N_TRAIN + POPULATION, n_features=N_FEATURES, random_state=seed)
    model = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(X[:N_TRAIN], y[:N_TRAIN])
    with tempfile.TemporaryDirectory() as d:
        manifest = model_store.save_model(model, X[:N_TRAIN], y[:N_TRAIN], Path(d), runtime="joblib")
    return model, manifest, X[:N_TRAIN], X[N_TRAIN:]


def false_alarms(
    model: Any, manifest: model_store.Manifest, source: np.ndarray, windows: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Per window size: share of feature evaluations reading moderate-or-worse / major, and of windows drifted."""
    policy = drift.policy_of(Settings())
    one_sample = dataclasses.replace(manifest, n_train=None)
    out = []
    for n in SIZES:
        moderate = major = psi_only = one_sample_bad = drifted = 0
        took = 0.0
        for _ in range(windows):
            W = source[rng.integers(0, len(source), n)]
            t0 = time.perf_counter()
            r = drift.evaluate(manifest, W, model.predict(W), policy=policy)
            took += time.perf_counter() - t0
            moderate += r.n_features_drifted
            major += sum(f.verdict is drift.Verdict.MAJOR for f in r.features)
            psi_only += sum((f.psi or 0.0) >= policy.psi_moderate for f in r.features)
            one_sample_bad += drift.evaluate(one_sample, W, None, policy=policy).n_features_drifted
            drifted += r.drifted
        evals = windows * N_FEATURES
        out.append(
            {
                "rows": n,
                "feature_false_alarm": moderate / evals,
                "feature_false_major": major / evals,
                "psi_only_false_alarm": psi_only / evals,
                "one_sample_false_alarm": one_sample_bad / evals,
                "window_false_drifted": drifted / windows,
                "evaluate_ms": 1000 * took / windows,
            }
        )
    return out


def detection(
    model: Any, manifest: model_store.Manifest, source: np.ndarray, windows: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Share of windows drifted with the top feature first, its mean moved by 1 training std, per window size."""
    assert manifest.held_out is not None
    top = int(np.argmax(manifest.held_out.importance))
    std = manifest.features[top].std
    # The floor of rows (min_samples) lowered so the statistics' own power shows below it.
    policy = dataclasses.replace(drift.policy_of(Settings()), min_samples=min(DETECT_SIZES))
    rates = {}
    for n in DETECT_SIZES:
        hits = 0
        for _ in range(windows):
            W = source[rng.integers(0, len(source), n)].copy()
            W[:, top] += std
            r = drift.evaluate(manifest, W, model.predict(W), policy=policy)
            hits += r.drifted and r.features[0].index == top
        rates[n] = hits / windows
    needed = next((n for n in DETECT_SIZES if rates[n] >= DETECT_POWER), None)
    floor = Settings().drift_min_samples
    return {
        "feature": top,
        "importance": manifest.held_out.importance[top],
        "detected_share_by_rows": rates,
        "rows_needed_statistics": needed,
        "rows_needed_with_floor": None if needed is None else max(needed, floor),
        "min_samples": floor,
        **_mixed(model, manifest, source, top, std, max(1, windows // 5), rng),
    }


def _mixed(
    model: Any, manifest: model_store.Manifest, source: np.ndarray, top: int, std: float, windows: int, rng
) -> dict[str, Any]:
    """In a full window of WINDOW rows, how many newest rows must carry the shift before it reads drifted."""
    policy = drift.policy_of(Settings())
    rates = {}
    for k in MIXED_NEWEST:
        hits = 0
        for _ in range(windows):
            W = source[rng.integers(0, len(source), WINDOW)].copy()
            W[-k:, top] += std
            r = drift.evaluate(manifest, W, model.predict(W), policy=policy)
            hits += r.drifted and r.features[0].index == top
        rates[k] = hits / windows
    needed = next((k for k in MIXED_NEWEST if rates[k] >= DETECT_POWER), None)
    return {"window": WINDOW, "in_full_window_detected_share_by_newest": rates, "in_full_window_newest_needed": needed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=300, help="windows per window size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here too")
    ns = p.parse_args(argv)
    rng = np.random.default_rng(ns.seed)
    model, manifest, train, population = build(42 + ns.seed)
    result = {
        "windows": ns.windows,
        "held_out": dataclasses.asdict(manifest.held_out) if manifest.held_out else None,
        "fresh_population": false_alarms(model, manifest, population, ns.windows, rng),
        "resampled_training_rows": false_alarms(model, manifest, train, ns.windows // 5, rng),
        "detect_1std_top_feature": detection(model, manifest, population, ns.windows // 2, rng),
    }
    print(f"{ns.windows} windows per size; per feature per evaluation (20 features):")
    print("rows  false alarm  false major  PSI>=0.1 alone  one-sample tests  window drifted  evaluate")
    for row in result["fresh_population"]:
        print(
            f"{row['rows']:>4}  {row['feature_false_alarm']:>11.2%}  {row['feature_false_major']:>11.2%}"
            f"  {row['psi_only_false_alarm']:>14.2%}  {row['one_sample_false_alarm']:>16.2%}"
            f"  {row['window_false_drifted']:>14.2%}  {row['evaluate_ms']:>6.1f} ms"
        )
    worst = max(r["feature_false_alarm"] for r in result["resampled_training_rows"])
    print(f"resampled training rows: worst false alarm per feature {worst:.2%}")
    d = result["detect_1std_top_feature"]
    print(
        f"1-std shift on feature {d['feature']} (most important): drifted and named first in >= 95% of windows "
        f"from {d['rows_needed_statistics']} rows (statistics), {d['rows_needed_with_floor']} with the "
        f"{d['min_samples']}-row floor; by rows: "
        + ", ".join(f"{n}: {v:.0%}" for n, v in d["detected_share_by_rows"].items())
    )
    print(
        f"in a full {d['window']}-row window: >= 95% once the newest {d['in_full_window_newest_needed']} rows carry "
        "the shift; by newest rows: "
        + ", ".join(f"{k}: {v:.0%}" for k, v in d["in_full_window_detected_share_by_newest"].items())
    )
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
