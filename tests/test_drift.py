"""Drift monitor: PSI/KS on known distributions, the shifted-feature acceptance check, the Redis window."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio
from sklearn.datasets import make_classification

from inferpool import keys
from inferpool.drift import (
    MIN_SAMPLES,
    Status,
    Verdict,
    aread_window,
    evaluate,
    ks_statistic,
    psi,
    read_window,
    record,
)
from inferpool.model_store import Manifest, load_model, summarize_features, train_reference

N_FEATURES = 20
WINDOW = 500


# --- fixtures -----------------------------------------------------------------


@pytest.fixture
def _drift_redis(redis_server) -> str:
    """The session's redis-server (tests/conftest.py), database 5: flushing it never touches the shared stack's."""
    return redis_server.url.rsplit("/", 1)[0] + "/5"


@pytest.fixture
def rclient(_drift_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(_drift_redis)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray, Manifest]:
    """The reference training data and a manifest summarising it (no model needed for drift)."""
    X, y = make_classification(n_samples=500, n_features=N_FEATURES, random_state=42)
    classes, counts = np.unique(y, return_counts=True)
    manifest = Manifest(
        version="test",
        sha256="0" * 64,
        file="test.joblib",
        n_features=N_FEATURES,
        classes=[int(c) for c in classes],
        class_proportions=[float(c) / counts.sum() for c in counts],
        created=0.0,
        estimator="none",
        features=summarize_features(X),
    )
    return X, y, manifest


def _window(X: np.ndarray, shifted: list[int], n: int = WINDOW, seed: int = 0) -> np.ndarray:
    """``n`` rows drawn from the training data, the ``shifted`` features moved up by 2 std."""
    rng = np.random.default_rng(seed)
    W = X[rng.integers(0, len(X), size=n)].copy()
    W[:, shifted] += 2 * X[:, shifted].std(axis=0)
    return W


# --- psi / ks -----------------------------------------------------------------


def test_psi_identical_is_zero() -> None:
    expected = [0.1] * 10
    assert psi(expected, [100] * 10) == pytest.approx(0.0, abs=1e-12)


def test_psi_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=20_000)
    (summary,) = summarize_features(train[:, None])
    inner = np.asarray(summary.edges[1:-1])
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0):
        live = rng.normal(loc=shift, size=5000)
        counts = np.bincount(np.searchsorted(inner, live, side="right"), minlength=len(summary.proportions))
        values.append(psi(summary.proportions, counts))
    assert values[0] < 0.01
    assert values == sorted(values)
    assert values[-1] > 1.0


def test_psi_empty_bin_is_finite() -> None:
    p = psi([0.5, 0.5], [10, 0])
    assert np.isfinite(p) and p > 1.0


def test_psi_rejects_mismatched_or_empty() -> None:
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [0, 0])


def test_ks_identical_small_shifted_large() -> None:
    rng = np.random.default_rng(2)
    (summary,) = summarize_features(rng.normal(size=(20_000, 1)))
    assert ks_statistic(summary, rng.normal(size=5000)) < 0.03
    assert ks_statistic(summary, rng.normal(loc=1.0, size=5000)) > 0.3
    # Everything above the top inner edge: the CDFs differ by the training mass below it.
    assert ks_statistic(summary, np.full(100, 1e6)) == pytest.approx(sum(summary.proportions[:-1]))


# --- evaluate: the acceptance check ----------------------------------------------


@pytest.mark.parametrize("shifted", [[0], [3, 7, 11], list(range(9))])
def test_exactly_shifted_features_flip(reference: tuple[np.ndarray, np.ndarray, Manifest], shifted: list[int]) -> None:
    X, _, manifest = reference
    report = evaluate(manifest, _window(X, shifted), None)
    verdicts = {f.index: f.verdict for f in report.features}
    for j in range(N_FEATURES):
        if j in shifted:
            assert verdicts[j] in (Verdict.MODERATE, Verdict.MAJOR), (j, report.features[j])
            assert report.features[j].mean_shift_std == pytest.approx(2.0, abs=0.3)
        else:
            assert verdicts[j] is Verdict.NONE, (j, report.features[j])
    # Fewer than half the features moved: the window as a whole is not drifted.
    assert report.status is Status.STABLE and not report.drifted
    assert report.n_samples == WINDOW


@pytest.mark.parametrize(("n_shifted", "drifted"), [(9, False), (10, True), (15, True)])
def test_dataset_verdict_flips_at_half(
    reference: tuple[np.ndarray, np.ndarray, Manifest], n_shifted: int, drifted: bool
) -> None:
    X, _, manifest = reference
    report = evaluate(manifest, _window(X, list(range(n_shifted))), None)
    assert report.n_features_drifted == n_shifted
    assert report.drifted is drifted
    assert report.status is (Status.DRIFTED if drifted else Status.STABLE)


def test_unshifted_window_is_quiet(reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    X, y, manifest = reference
    report = evaluate(manifest, _window(X, []), y[:WINDOW])
    assert max(f.psi for f in report.features) < 0.1
    assert report.predictions is not None and report.predictions.verdict is Verdict.NONE
    assert report.status is Status.STABLE


def test_reference_model_manifest_through_json(
    tmp_path: Path, reference: tuple[np.ndarray, np.ndarray, Manifest]
) -> None:
    # The manifest as workers read it (edges stored as None in JSON) and the model's own predictions.
    X, _, _ = reference
    train_reference(tmp_path, n_estimators=10)
    model, manifest = load_model(tmp_path)
    W = _window(X, [1, 4])
    report = evaluate(manifest, W, model.predict(W))
    assert [f.index for f in report.features if f.verdict is not Verdict.NONE] == [1, 4]
    assert not report.drifted


def test_unshifted_window_at_minimum_size_is_not_drifted(reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    # MIN_SAMPLES exists because small windows read noise as drift; at the minimum they must not.
    X, _, manifest = reference
    for seed in range(10):
        report = evaluate(manifest, _window(X, [], n=MIN_SAMPLES, seed=seed), None)
        assert report.status is Status.STABLE and report.n_features_drifted <= 1, seed


def test_class_mix_drift(reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    X, _, manifest = reference
    predicted = np.array([0] * 450 + [1] * 50)
    report = evaluate(manifest, _window(X, []), predicted)
    assert report.predictions is not None
    assert report.predictions.verdict is Verdict.MAJOR
    assert report.predictions.observed == pytest.approx([0.9, 0.1])
    # Classes compare as text, and ones the model never had are counted, not crashed on.
    report = evaluate(manifest, _window(X, []), np.array(["0", "1"] * 245 + ["7"] * 10))
    assert report.predictions is not None and report.predictions.n_unknown == 10


def test_insufficient_data(reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    X, y, manifest = reference
    report = evaluate(manifest, _window(X, list(range(N_FEATURES)), n=MIN_SAMPLES - 1), y[: MIN_SAMPLES - 1])
    assert report.status is Status.INSUFFICIENT_DATA and not report.drifted
    assert all(f.verdict is Verdict.INSUFFICIENT_DATA and f.psi is None for f in report.features)
    assert report.predictions is not None and report.predictions.verdict is Verdict.INSUFFICIENT_DATA
    # An empty window (nothing recorded yet) is the same answer, not an error...
    assert evaluate(manifest, np.empty((0, 0)), np.empty(0)).status is Status.INSUFFICIENT_DATA
    # ...and so is a window holding only a previous model's rows, of another width.
    old_rows = evaluate(manifest, np.ones((1000, N_FEATURES + 1)), np.zeros(1000, dtype=int))
    assert old_rows.status is Status.INSUFFICIENT_DATA and old_rows.n_samples == 0


def test_to_json_shape(reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    X, y, manifest = reference
    d = evaluate(manifest, _window(X, [2]), y[:WINDOW]).to_json()
    json.dumps(d, allow_nan=False)
    assert d["status"] == "stable" and d["drifted"] is False
    assert d["n_samples"] == WINDOW and d["n_features"] == N_FEATURES and d["n_features_drifted"] == 1
    assert d["thresholds"] == {"psi_moderate": 0.1, "psi_major": 0.25}
    assert set(d["features"][0]) == {"index", "psi", "ks", "verdict", "mean", "train_mean", "mean_shift_std"}
    assert d["features"][2]["verdict"] in ("moderate", "major")
    assert set(d["predictions"]) == {"classes", "expected", "observed", "psi", "verdict", "n", "n_unknown"}
    json.dumps(evaluate(manifest, np.empty((0, 0)), None).to_json(), allow_nan=False)


# --- the shared window in Redis --------------------------------------------------


def test_record_roundtrip_and_bound(rclient: redis.Redis, reference: tuple[np.ndarray, np.ndarray, Manifest]) -> None:
    X, y, _ = reference
    assert record(rclient, X[:100], y[:100], sample_rate=1.0, window=1000) == 100
    W, classes = read_window(rclient)
    np.testing.assert_array_equal(W, X[:100].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(classes, y[:100])
    # Many writers, one bounded window: the newest `window` rows survive, lists stay aligned.
    for start in range(100, 500, 100):
        record(rclient, X[start : start + 100], y[start : start + 100], sample_rate=1.0, window=250)
    W, classes = read_window(rclient)
    assert W.shape == (250, N_FEATURES) and rclient.llen(keys.DRIFT_CLASSES) == 250
    np.testing.assert_array_equal(W, X[250:500].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(classes, y[250:500])


def test_record_samples_at_rate(rclient: redis.Redis) -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(5000, 4))
    n = record(rclient, rows, np.zeros(5000, dtype=int), sample_rate=0.2, window=10_000, rng=rng)
    assert 850 < n < 1150 and rclient.llen(keys.DRIFT_SAMPLES) == n
    # One huge batch pushes at most one window.
    assert record(rclient, rows, np.zeros(5000, dtype=int), sample_rate=1.0, window=300) == 300
    assert record(rclient, rows, np.zeros(5000, dtype=int), sample_rate=0.0, window=300) == 0


def test_window_keeps_newest_width(rclient: redis.Redis) -> None:
    record(rclient, np.ones((5, 3)), np.zeros(5, dtype=int), sample_rate=1.0, window=100)
    record(rclient, np.full((4, 2), 2.0), np.array(["a", "b", "a", "b"]), sample_rate=1.0, window=100)
    W, classes = read_window(rclient)
    np.testing.assert_array_equal(W, np.full((4, 2), 2.0))
    assert list(classes) == ["a", "b", "a", "b"]


def test_async_read_matches_and_end_to_end(
    _drift_redis: str, rclient: redis.Redis, reference: tuple[np.ndarray, np.ndarray, Manifest]
) -> None:
    X, y, manifest = reference
    shifted = list(range(12))
    W = _window(X, shifted, n=2000)
    record(rclient, W, np.zeros(2000, dtype=int), sample_rate=0.2, window=2000, rng=np.random.default_rng(4))

    async def read() -> tuple[np.ndarray, np.ndarray]:
        aclient = redis.asyncio.Redis.from_url(_drift_redis)
        try:
            return await aread_window(aclient)
        finally:
            await aclient.aclose()

    aW, aclasses = asyncio.run(read())
    sW, sclasses = read_window(rclient)
    np.testing.assert_array_equal(aW, sW)
    np.testing.assert_array_equal(aclasses, sclasses)
    report = evaluate(manifest, aW, aclasses)
    assert report.drifted and report.n_features_drifted == len(shifted)
    assert report.predictions is not None and report.predictions.verdict is Verdict.MAJOR
