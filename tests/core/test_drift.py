"""Drift: statistics on known distributions, verdicts on recorded windows of the reference model, the Redis
window (predicted and refused rows), the shared evaluation, the exporter's per-feature gauges, and one
end-to-end run through real workers and the API.

The reference model (tests/conftest.py's ``model_dir``) leans on a few of its 20 features; the verdict
tests find them from its manifest rather than assuming which they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry, generate_latest
from sklearn.datasets import make_classification

from api.inputs import refused_rows
from api.schemas import DriftResponse
from inferpool import drift, keys, model_store
from inferpool.drift import (
    MIN_SAMPLES,
    Kind,
    Policy,
    Refusals,
    Status,
    Verdict,
    aread,
    aread_window,
    arecord_refusals,
    evaluate,
    ks_statistic,
    psi,
    read,
    read_window,
    record,
)
from inferpool.drift import cache as drift_cache
from inferpool.drift.buffer import SampleBuffer
from inferpool.drift.stats import chi2_pvalue, ks_pvalue, stuck_pvalue
from inferpool.exporter import ClusterCollector
from inferpool.model_store import Manifest, summarize_features
from inferpool.settings import Settings
from tests.support.monitoring import parse, value
from tests.support.waiting import wait_until

N_FEATURES = 20
WINDOW = 500
KINDS = ("mean_shift", "scale", "stuck", "refused")


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
def served(model_dir: Path) -> tuple[object, Manifest]:
    """The reference model and its manifest as workers read them (edges None in JSON, importance recorded)."""
    return model_store.load_model(model_dir)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """The reference training set (same recipe and seed as ``train_reference``)."""
    return make_classification(n_samples=500, n_features=N_FEATURES, random_state=42)


@pytest.fixture(scope="module")
def ranked(served: tuple[object, Manifest]) -> tuple[int, list[int]]:
    """(the feature the model uses most, the features it ignores: under 1 % of the importance each)."""
    w = np.clip(served[1].held_out.importance, 0, None)
    w = w / w.sum()
    return int(np.argmax(w)), [int(j) for j in np.flatnonzero(w < 0.01)]


def _sample(X: np.ndarray, n: int = WINDOW, seed: int = 0) -> np.ndarray:
    """``n`` rows drawn from the training rows: the training distribution, unshifted."""
    return X[np.random.default_rng(seed).integers(0, len(X), size=n)].copy()


def _apply(kind: str, W: np.ndarray, X: np.ndarray, cols: list[int]) -> tuple[np.ndarray, Refusals | None]:
    """One kind of drift on ``cols``: rows to predict, and refused rows (10 % of those offered) if any."""
    W = W.copy()
    mu, sd = X[:, cols].mean(axis=0), X[:, cols].std(axis=0)
    if kind == "mean_shift":
        W[:, cols] += sd
    elif kind == "scale":  # twice the spread around the training mean: the mean stays
        W[:, cols] = mu + 2 * (W[:, cols] - mu)
    elif kind == "stuck":
        W[:, cols] = np.median(X[:, cols], axis=0)
    elif kind == "refused":
        k = len(W) // 10
        return W[k:], Refusals(k, dict.fromkeys(cols, k))
    return W, None


def _judge(served: tuple[object, Manifest], W: np.ndarray, refused: Refusals | None = None, **kw) -> drift.DriftReport:
    model, manifest = served
    return evaluate(manifest, W, model.predict(W), refused=refused, **kw)


# --- statistics -------------------------------------------------------------------


def test_psi_identical_is_zero_and_grows_with_shift() -> None:
    assert psi([0.1] * 10, [100] * 10) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    (summary,) = summarize_features(rng.normal(size=(20_000, 1)))
    values = [psi(summary.proportions, drift.stats.bin_counts(summary, rng.normal(s, size=5000))) for s in (0, 0.5, 2)]
    assert values[0] < 0.01 and values == sorted(values) and values[-1] > 1.0
    assert np.isfinite(psi([0.5, 0.5], [10, 0]))
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [0, 0])


def test_ks_at_the_bin_edges() -> None:
    rng = np.random.default_rng(2)
    (summary,) = summarize_features(rng.normal(size=(20_000, 1)))
    assert ks_statistic(summary, rng.normal(size=5000)) < 0.03
    assert ks_statistic(summary, rng.normal(loc=1.0, size=5000)) > 0.3
    # Everything above the top inner edge: the CDFs differ by the training mass below it.
    assert ks_statistic(summary, np.full(100, 1e6)) == pytest.approx(sum(summary.proportions[:-1]))


def test_p_values_account_for_both_sample_sizes() -> None:
    expected = [0.1] * 10
    counts = [12, 8, 11, 9, 10, 10, 9, 11, 8, 12]
    assert chi2_pvalue(expected, counts, n_train=500) > 0.9
    moved = [30, 20, 15, 10, 8, 6, 5, 3, 2, 1]
    assert chi2_pvalue(expected, moved, n_train=500) < 1e-6
    # The same counts say less against 500 training rows than against exact proportions.
    assert chi2_pvalue(expected, [p * 20 for p in moved], 500) > chi2_pvalue(expected, [p * 20 for p in moved], None)
    # A distance of 0.1 is noise for 50 rows, a change for 2,000.
    assert ks_pvalue(0.1, 50, 500) > 0.5 and ks_pvalue(0.1, 2000, 500) < 1e-3
    assert chi2_pvalue([1.0], [40], 500) == 1.0  # a constant training feature: one bin


def test_stuck_needs_one_value_in_half_the_rows() -> None:
    rng = np.random.default_rng(3)
    (summary,) = summarize_features(rng.normal(size=(500, 1)))
    assert stuck_pvalue(summary, np.full(50, 0.3)) == pytest.approx(summary.proportions[5] ** 50)
    assert stuck_pvalue(summary, np.concatenate([np.full(25, 0.3), rng.normal(size=25)])) < 1e-6
    assert stuck_pvalue(summary, np.concatenate([np.full(20, 0.3), rng.normal(size=30)])) is None
    assert stuck_pvalue(summary, np.array([0.3, 0.4, 0.5])) is None
    assert stuck_pvalue(summary, np.array([0.3, 0.4])) > 0.1  # two rows, half of them one value: chance
    (constant,) = summarize_features(np.ones((500, 1)))
    assert stuck_pvalue(constant, np.ones(50)) is None  # training saw one value too


# --- importance in the manifest -------------------------------------------------------


def test_manifest_keeps_held_out_importance(served: tuple[object, Manifest], ranked: tuple[int, list[int]]) -> None:
    _, manifest = served
    h = manifest.held_out
    assert h is not None and h.method == "3-fold cross-fit" and h.n_rows == 500 and manifest.n_train == 500
    assert len(h.importance) == N_FEATURES and 0.8 < h.score <= 1.0
    assert sum(h.predicted_proportions) == pytest.approx(1.0)
    top, ignored = ranked
    # make_classification's defaults: 2 informative and 2 redundant features, 16 of noise.
    assert h.importance[top] > 0.1 and len(ignored) >= 12


def test_old_manifest_without_importance_loads_and_weighs_features_equally(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray]
) -> None:
    doc = served[1].to_json()
    for name in ("held_out", "n_train"):
        doc.pop(name)
    old = Manifest.from_json(json.loads(json.dumps(doc)))
    assert old.held_out is None and old.n_train is None
    report = evaluate(old, _sample(data[0]), None)
    assert report.importance_source is None and report.status is Status.STABLE
    assert [f.importance for f in report.features] == pytest.approx([1 / N_FEATURES] * N_FEATURES)


def test_register_with_held_out_rows(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = data
    model = LogisticRegression(max_iter=500).fit(X[:400], y[:400])
    m = model_store.save_model(model, X[:400], y[:400], tmp_path, runtime="joblib", held_out=(X[400:], y[400:]))
    assert m.held_out is not None and m.held_out.method == "held-out rows" and m.held_out.n_rows == 100
    assert m.held_out.score == pytest.approx(model.score(X[400:], y[400:]))
    assert model_store.read_manifest(tmp_path) == m


# --- verdicts on recorded windows ---------------------------------------------------


def test_unshifted_windows_read_stable_with_no_feature_major(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray]
) -> None:
    """From the smallest window judged to the default window size; bench/drift_calibration.py measures the rates."""
    flagged = 0
    for n in (MIN_SAMPLES, 300, 2000):
        for seed in range(8):
            report = _judge(served, _sample(data[0], n, seed))
            assert report.status is Status.STABLE and not report.drifted, (n, seed, report.reasons)
            assert not any(f.verdict is Verdict.MAJOR for f in report.features), (n, seed)
            assert report.predictions is not None and report.predictions.verdict is Verdict.NONE
            flagged += report.n_features_drifted
    assert flagged <= 2  # of 480 feature evaluations: the 1 % per-feature budget, with room


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [300, 2000])
def test_each_kind_on_the_top_feature_flips_and_names_it_first(
    served: tuple[object, Manifest],
    data: tuple[np.ndarray, np.ndarray],
    ranked: tuple[int, list[int]],
    kind: str,
    n: int,
) -> None:
    top, _ = ranked
    W, refused = _apply(kind, _sample(data[0], n), data[0], [top])
    report = _judge(served, W, refused)
    assert report.status is Status.DRIFTED and report.drifted
    first = report.features[0]
    assert first.index == top and first.verdict is Verdict.MAJOR and first.kind is Kind(kind)
    assert first.important and f"feature {top} is major" in report.reasons[0]
    assert report.n_features_drifted == 1  # nothing else reads as moved


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_on_ignored_features_is_reported_but_does_not_flip(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]], kind: str
) -> None:
    _, ignored = ranked
    W, refused = _apply(kind, _sample(data[0], 2000), data[0], ignored)
    report = _judge(served, W, refused)
    assert report.status is Status.STABLE and not report.drifted, report.reasons
    moved = {f.index: f for f in report.features if f.verdict is not Verdict.NONE}
    assert set(moved) == set(ignored)
    assert all(f.verdict is Verdict.MAJOR and f.kind is Kind(kind) for f in moved.values())
    assert report.weighted_share is not None and report.weighted_share < 0.05


def test_prediction_mix_moving_flips(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    # A population that is now mostly class 1: the mix moves, and so do the features that tell the classes apart.
    X, y = data
    rng = np.random.default_rng(5)
    ones, zeros = X[y == 1], X[y == 0]
    W = np.concatenate([ones[rng.integers(0, len(ones), 850)], zeros[rng.integers(0, len(zeros), 150)]])
    report = _judge(served, W)
    assert report.drifted and report.predictions is not None and report.predictions.verdict is Verdict.MAJOR
    assert any("predicted-class mix" in r for r in report.reasons)
    assert report.features[0].index == ranked[0]
    # The mix alone, on unshifted inputs, flips the verdict too.
    _, manifest = served
    alone = evaluate(manifest, _sample(X, WINDOW), np.array([1] * 450 + [0] * 50))
    assert alone.drifted and alone.reasons == [f"predicted-class mix is major (PSI {alone.predictions.psi:.2f})"]
    assert alone.predictions.observed == pytest.approx([0.1, 0.9])
    # Classes compare as text, and ones the model never had are counted, not crashed on.
    odd = evaluate(manifest, _sample(X, WINDOW), np.array(["0", "1"] * 245 + ["7"] * 10))
    assert odd.predictions is not None and odd.predictions.n_unknown == 10


def test_weighted_share_and_top_set_follow_the_policy(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    top, _ = ranked
    only_top = Policy(top_importance=0.01, weighted_share=1.0)  # the top feature alone is "important"
    W, _ = _apply("mean_shift", _sample(data[0], 2000), data[0], [top])
    assert _judge(served, W, policy=only_top).drifted
    # The next three by importance, all moved: not drifted while only the top feature counts...
    others = [int(j) for j in np.argsort(-np.asarray(served[1].held_out.importance))[1:4]]
    W, _ = _apply("mean_shift", _sample(data[0], 2000), data[0], others)
    report = _judge(served, W, policy=only_top)
    share = sum(report.feature(j).importance for j in others)
    assert not report.drifted and report.weighted_share == pytest.approx(share)
    # ...and by their weight when it passes the threshold.
    report = _judge(served, W, policy=Policy(top_importance=0.01, weighted_share=share - 0.01))
    assert report.drifted and report.reasons == [
        f"drifting features carry {share:.1%} of the importance (threshold {share - 0.01:.0%})"
    ]


def test_refusals_alone_are_judged_when_no_row_gets_through(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    """Every row refused for the top feature: no distribution to test, yet the window is drifted."""
    top, _ = ranked
    report = evaluate(served[1], np.empty((0, 0)), np.empty(0), refused=Refusals(200, {top: 200}))
    assert report.drifted and report.feature(top).verdict is Verdict.MAJOR and report.feature(top).refused_share == 1
    assert report.n_samples == 0 and report.n_refused == 200
    # A handful of refusals is one client's bug, not a broken input.
    few = _judge(served, _sample(data[0]), Refusals(4, {top: 4}))
    assert few.feature(top).verdict is Verdict.NONE


def test_insufficient_data(served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    W, _ = _apply("mean_shift", _sample(X, MIN_SAMPLES - 1), X, list(range(N_FEATURES)))
    report = _judge(served, W)
    assert report.status is Status.INSUFFICIENT_DATA and not report.drifted
    assert all(f.verdict is Verdict.INSUFFICIENT_DATA and f.psi is None for f in report.features)
    assert report.predictions is not None and report.predictions.verdict is Verdict.INSUFFICIENT_DATA
    # An empty window (nothing recorded yet) is the same answer, not an error...
    assert evaluate(served[1], np.empty((0, 0)), np.empty(0)).status is Status.INSUFFICIENT_DATA
    # ...and so is a window holding only a previous model's rows, of another width.
    old_rows = evaluate(served[1], np.ones((1000, N_FEATURES + 1)), np.zeros(1000, dtype=int))
    assert old_rows.status is Status.INSUFFICIENT_DATA and old_rows.n_samples == 0


def test_json_round_trip_and_schema(
    served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    W, refused = _apply("refused", _sample(data[0], 1000), data[0], [ranked[0]])
    report = _judge(served, W, refused)
    d = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert drift.DriftReport.from_json(d) == report
    DriftResponse.model_validate(d)  # the documented response model matches what the route sends
    assert d["features"][0]["index"] == ranked[0] and d["features"][0]["kind"] == "refused"
    assert d["thresholds"] == Policy().to_json() and d["n_refused"] == refused.rows
    json.dumps(evaluate(served[1], np.empty((0, 0)), None).to_json(), allow_nan=False)


# --- the shared window in Redis --------------------------------------------------


def test_record_roundtrip_and_bound(rclient: redis.Redis, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
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


def test_buffered_samples_reach_the_window_at_the_flush_newest_window_kept(
    rclient: redis.Redis, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    buf = SampleBuffer(flush_s=3600)  # its thread never flushes here: the test does
    assert buf.add(rclient, X[:60], y[:60], sample_rate=1.0, window=100) == 60
    assert buf.add(rclient, X[60:90], y[60:90], sample_rate=1.0, window=100) == 30
    assert rclient.llen(keys.DRIFT_SAMPLES) == 0  # held, not pushed per task
    assert buf.flush() == 90
    W, classes = read_window(rclient)
    np.testing.assert_array_equal(W, X[:90].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(classes, y[:90])
    # More than a window sampled in one interval: the newest window's worth is pushed, as the window would
    # have kept, and the lists stay aligned.
    for start in range(90, 390, 100):
        buf.add(rclient, X[start : start + 100], y[start : start + 100], sample_rate=1.0, window=100)
    assert buf.flush() == 100 and buf.flush() == 0
    W, classes = read_window(rclient)
    np.testing.assert_array_equal(W, X[290:390].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(classes, y[290:390])


def test_buffered_samples_flush_by_themselves_and_outlive_a_redis_refusal(
    rclient: redis.Redis, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    buf = SampleBuffer(flush_s=0.05)
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    buf.add(gone, X[:10], y[:10], sample_rate=1.0, window=100)
    wait_until(lambda: not buf._rows, 5, "the refused flush to drop its rows")
    buf.add(rclient, X[10:30], y[10:30], sample_rate=1.0, window=100)  # the same thread goes on
    wait_until(lambda: rclient.llen(keys.DRIFT_SAMPLES) == 20, 5, "the flush thread to push the samples")
    np.testing.assert_array_equal(read_window(rclient)[0], X[10:30].astype(np.float32).astype(np.float64))


def test_window_keeps_newest_width(rclient: redis.Redis) -> None:
    record(rclient, np.ones((5, 3)), np.zeros(5, dtype=int), sample_rate=1.0, window=100)
    record(rclient, np.full((4, 2), 2.0), np.array(["a", "b", "a", "b"]), sample_rate=1.0, window=100)
    W, classes = read_window(rclient)
    np.testing.assert_array_equal(W, np.full((4, 2), 2.0))
    assert list(classes) == ["a", "b", "a", "b"]


def test_refusals_share_the_window(_drift_redis: str, rclient: redis.Redis, data: tuple[np.ndarray, np.ndarray]):
    X, y = data
    record(rclient, X[:30], y[:30], sample_rate=1.0, window=50)

    async def refuse() -> tuple[int, drift.Window, tuple]:
        aclient = redis.asyncio.Redis.from_url(_drift_redis)
        try:
            n = await arecord_refusals(aclient, [[3], [3, 7], [7, 3]], sample_rate=1.0, window=50)
            n += await arecord_refusals(aclient, [[1]] * 100, sample_rate=0.0, window=50)
            return n, await aread(aclient), await aread_window(aclient)
        finally:
            await aclient.aclose()

    n, awin, (aX, aclasses) = asyncio.run(refuse())
    assert n == 3
    win = read(rclient)
    assert win.refused == Refusals(3, {3: 3, 7: 2}) and awin.refused == win.refused
    np.testing.assert_array_equal(win.X, X[:30].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(aX, win.X)
    np.testing.assert_array_equal(aclasses, y[:30])
    # Refused rows take their place in the bounded window like predicted ones.
    record(rclient, X[30:80], y[30:80], sample_rate=1.0, window=50)
    assert read(rclient).refused == Refusals()


def test_refused_rows_from_error_fields() -> None:
    fields = ["instances.3.7", "instances.3.2", "X.5", "row 4, column 8", "labels.0.label", "instances.2", "body"]
    # Rows 3 (instances, and CSV's 1-based row 4), 0 (the one-row body "X") and 9 (cells of a numeric check).
    assert sorted(refused_rows(fields, [(9, 1), (3, 7)])) == [[1], [2, 7], [5]]


def test_shared_evaluation_is_cached_per_model_and_policy(
    rclient: redis.Redis, served: tuple[object, Manifest], data: tuple[np.ndarray, np.ndarray]
) -> None:
    _, manifest = served
    record(rclient, data[0][:200], data[1][:200], sample_rate=1.0, window=2000)
    first = drift_cache.report(rclient, manifest, Policy(), ttl_s=30)
    assert rclient.pttl(keys.DRIFT_REPORT) > 25_000
    record(rclient, data[0][200:300], data[1][200:300], sample_rate=1.0, window=2000)
    assert drift_cache.report(rclient, manifest, Policy(), ttl_s=30) == first  # within the TTL: the same report
    other = drift_cache.report(rclient, manifest, Policy(psi_major=0.3), ttl_s=30)  # other thresholds: afresh
    assert other.n_samples == 300 and other.policy.psi_major == 0.3
    renamed = dataclasses.replace(manifest, version="other")
    assert drift_cache.report(rclient, renamed, Policy(), ttl_s=0).n_samples == 300


# --- the exporter's per-feature gauges -----------------------------------------------------


def test_exporter_gauges_name_the_important_major_feature(
    rclient: redis.Redis, model_dir: Path, data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    top, ignored = ranked
    model, _ = model_store.load_model(model_dir)
    W, _ = _apply("stuck", _sample(data[0], 600), data[0], [top, ignored[0]])
    record(rclient, W, model.predict(W), sample_rate=1.0, window=2000)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(rclient, Settings(model_dir=model_dir, drift_cache_s=0)))
    m = parse(generate_latest(reg).decode())
    assert value(m, "inferpool_drift_window_rows") == 600
    assert value(m, "inferpool_drift_dataset_drifted") == 1
    for j, important in ((top, 1), (ignored[0], 0)):
        assert value(m, "inferpool_drift_feature_verdict", feature=str(j), verdict="major") == 1
        assert value(m, "inferpool_drift_feature_important", feature=str(j)) == important
    assert value(m, "inferpool_drift_feature_importance_ratio", feature=str(top)) > 0.1
    assert value(m, "inferpool_drift_feature_pvalue", feature=str(top), test="chi2") < 1e-6
    assert value(m, "inferpool_drift_drifted_importance_ratio") > 0.1
    assert value(m, "inferpool_concept_drifted") == 0 and value(m, "inferpool_accuracy_training_ratio") > 0.8


# --- end to end: real workers, the API's refusals, the route -------------------------------


def _send(api: httpx.Client, X: np.ndarray, client: redis.Redis, window_rows: int) -> None:
    """A job of ``X``; returns once it succeeded and the window holds ``window_rows`` (workers push every 0.5 s)."""
    job = api.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
    wait_until(lambda: api.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 30, "job")
    wait_until(lambda: client.llen(keys.DRIFT_SAMPLES) == window_rows, 10, f"{window_rows} rows in the window")


@pytest.mark.timeout(120)
def test_through_the_api(
    stack_factory: Callable, data: tuple[np.ndarray, np.ndarray], ranked: tuple[int, list[int]]
) -> None:
    """Calm rows read stable; a stuck top feature flips the verdict and is named first; rows refused at the API
    for a missing or out-of-range top feature are counted against it."""
    st = stack_factory(INFERPOOL_DRIFT_SAMPLE_RATE="1.0", INFERPOOL_DRIFT_CACHE_S="0")
    st.start_api()
    st.start_worker("online", concurrency=1)
    api = httpx.Client(base_url=st.url, timeout=30)
    top, _ = ranked
    X = data[0]
    _send(api, _sample(X, 400, seed=1), st.client, 400)
    calm = api.get("/v1/monitoring/drift").json()
    assert calm["status"] == "stable" and calm["n_samples"] == 400, calm["reasons"]
    assert not [f for f in calm["features"] if f["verdict"] == "major"]

    W, _ = _apply("stuck", _sample(X, 400, seed=2), X, [top])
    _send(api, W, st.client, 800)
    moved = api.get("/v1/monitoring/drift").json()
    assert moved["drifted"] and moved["features"][0]["index"] == top and moved["features"][0]["kind"] == "stuck"

    st.client.delete(keys.DRIFT_SAMPLES, keys.DRIFT_CLASSES)
    _send(api, _sample(X, 150, seed=3), st.client, 150)
    bad = _sample(X, 1, seed=4).tolist()[0]
    for value_ in (None, 1e39):  # missing (pydantic refuses it), beyond float32 (the API's own check)
        bad[top] = value_
        for _ in range(10):
            assert api.post("/v1/predict", json={"instances": [bad]}).status_code == 422
    job = api.post("/v1/jobs", json={"instances": [bad] * 20})  # one refused job: each of its rows counts
    assert job.status_code == 422
    refused = api.get("/v1/monitoring/drift").json()
    first = refused["features"][0]
    assert refused["n_refused"] == 40 and first["index"] == top and first["refused"] == 40
    assert first["kind"] == "refused" and refused["drifted"]
