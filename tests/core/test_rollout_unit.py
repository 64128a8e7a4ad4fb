"""Rollout logic without processes: routing shares, verdicts, the registry's files, plans in a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from api.rollout import Rollout
from inferpool import model_store, registry, rollout_store
from inferpool.errors import RolloutError
from inferpool.redis_client import async_client
from inferpool.rollout import (
    Action,
    Margins,
    Mode,
    Plan,
    State,
    VersionStats,
    apply,
    bucket,
    choose,
    describe,
    judge,
    mix_difference,
    parse_steps,
)
from inferpool.settings import Settings

MARGINS = Margins(
    error_ratio=0.01,
    p99_ratio=1.5,
    p99_slack_ms=5,
    accuracy=0.03,
    min_labels=50,
    breach_min_requests=40,
    p99_min_samples=50,
)


def _plan(**kw) -> Plan:
    base = dict(
        id="p1", mode=Mode.canary, stable="v1", candidate="v2", steps=(5.0, 25.0, 50.0, 100.0), step_s=60,
        min_requests=100, started_at=0.0, started_by="t", step_started=0.0,
    )  # fmt: skip
    return Plan(**{**base, **kw})


def _healthy(n: int, ms: float = 10.0) -> VersionStats:
    return VersionStats(requests=n, errors=0, model_ms=tuple([ms] * min(n, 200)), classes={"0": n // 2, "1": n // 2})


def test_a_callers_version_is_fixed_and_shares_only_grow() -> None:
    keys = [f"caller-{i}" for i in range(2000)]
    on = {k for k in keys if choose(_plan(step=1), k, "v1") == "v2"}
    later = {k for k in keys if choose(_plan(step=2), k, "v1") == "v2"}
    assert on <= later  # once on the candidate, a caller stays there
    assert all(choose(_plan(step=1), k, "v1") == choose(_plan(step=1), k, "v1") for k in keys[:100])
    assert choose(None, "anyone", "v1") == "v1"
    assert choose(_plan(state=State.promoted), "anyone", "v1") == "v2"
    assert choose(_plan(state=State.rolled_back, step=3), "anyone", "v1") == "v1"


def test_buckets_are_uniform() -> None:
    b = np.array([bucket("plan", f"k{i}") for i in range(20_000)])
    counts, _ = np.histogram(b, bins=10, range=(0, 1))
    assert counts.min() > 1800 and counts.max() < 2200


def test_breaches_roll_back() -> None:
    plan = _plan()
    errors = VersionStats(requests=100, errors=10, model_ms=(10.0,) * 100)
    assert judge(plan, _healthy(1000), errors, MARGINS, 1.0).action is Action.rollback
    slow = _healthy(100, ms=30.0)
    v = judge(plan, _healthy(1000), slow, MARGINS, 1.0)
    assert v.action is Action.rollback and "p99" in v.reason
    # A few preempted tasks: the tail moves, the median does not: no breach.
    noisy = VersionStats(requests=200, model_ms=(10.0,) * 196 + (100.0,) * 4)
    assert judge(plan, _healthy(1000), noisy, MARGINS, 1.0).action is Action.hold
    worse = VersionStats(requests=100, model_ms=(10.0,) * 100, labelled=100, correct=80)
    better = VersionStats(requests=1000, model_ms=(10.0,) * 100, labelled=100, correct=95)
    assert "accuracy" in judge(plan, better, worse, MARGINS, 1.0).reason
    # One error is no evidence (a timeout on a busy machine); too few requests neither: hold.
    assert judge(plan, _healthy(1000), VersionStats(requests=50, errors=1), MARGINS, 1.0).action is Action.hold
    assert judge(plan, _healthy(1000), VersionStats(requests=5, errors=5), MARGINS, 1.0).action is Action.hold


def test_steps_advance_after_window_and_requests_then_promote() -> None:
    plan = _plan()
    assert judge(plan, _healthy(1000), _healthy(200), MARGINS, 30).action is Action.hold  # window not over
    assert judge(plan, _healthy(1000), _healthy(50), MARGINS, 61).action is Action.hold  # too few requests
    untimed = VersionStats(requests=500, model_ms=(10.0,) * 20)
    assert "model times" in judge(plan, _healthy(1000), untimed, MARGINS, 61).reason  # latency not judged yet
    v = judge(plan, _healthy(1000), _healthy(200), MARGINS, 61)
    assert v.action is Action.advance and v.figures["prediction_mix_difference"] == 0
    nxt = apply(plan, v.action, 61)
    assert (nxt.step, nxt.step_started, nxt.share) == (1, 61, 0.25)
    last = _plan(step=3)
    assert judge(last, _healthy(1000), _healthy(200), MARGINS, 61).action is Action.promote
    assert apply(last, Action.promote, 61).versions == ("v2",)
    shadow = _plan(mode=Mode.shadow, steps=(10.0,))
    assert shadow.share == 0 and shadow.shadow_share == 0.1
    assert judge(shadow, _healthy(1000), _healthy(200), MARGINS, 61).action is Action.hold
    assert "25 % to candidate (step 2 of 4)" in describe(nxt) and "shadow copy of 10 %" in describe(shadow)
    assert describe(None).startswith("rollout: none")


def test_mix_difference_and_steps_parse() -> None:
    assert mix_difference({"0": 50, "1": 50}, {"0": 100}) == pytest.approx(0.5)
    assert mix_difference({}, {"0": 1}) is None
    assert parse_steps("5, 25,50,100") == (5, 25, 50, 100)
    for bad in ("", "50,25", "0,10", "10,200"):
        with pytest.raises(ValueError):
            parse_steps(bad)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("registry")
    X, y = make_classification(n_samples=300, n_features=6, random_state=1)
    first = RandomForestClassifier(n_estimators=5, random_state=1).fit(X, y)
    model_store.save_model(first, X, y, d, runtime="joblib", held_out=(X[:100], y[:100]))
    return d, X, y


def _register(d: Path, X: np.ndarray, y: np.ndarray, seed: int, tmp: Path) -> model_store.Manifest:
    path = tmp / f"m{seed}.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=5, random_state=seed).fit(X, y), path)
    return registry.register(str(path), X, y, d, runtime="joblib")


def test_registry_register_promote_rollback_retire(registry_dir, tmp_path) -> None:
    d, X, y = registry_dir
    first = model_store.current_version(d)
    m = _register(d, X, y, 2, tmp_path)
    assert model_store.current_version(d) == first  # registering never serves
    assert {r.version for r in registry.versions(d)} >= {first, m.version}
    registry.promote(d, m.version, "test")
    assert model_store.current_version(d) == m.version
    with pytest.raises(RolloutError):
        registry.retire(d, m.version, set())  # serving
    registry.rollback(d, "bad day")
    assert model_store.current_version(d) == first
    assert [p.version for p in registry.promotions(d)][-1] == first
    with pytest.raises(RolloutError):
        registry.retire(d, m.version, {m.version})  # named by a running plan
    registry.retire(d, m.version, set())
    assert not (d / m.file).exists()
    with pytest.raises(RolloutError):
        registry.known(d, m.version)


def test_registering_from_mlflow_names_the_missing_extra(registry_dir, monkeypatch) -> None:
    d, X, y = registry_dir
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(RolloutError, match=r"'mlflow' extra"):
        registry.register("models:/fraud/3", X, y, d)


def test_observed_canary_share_through_real_plans(fresh_redis, registry_dir, tmp_path) -> None:
    """Routing decisions of the API's Rollout object against plans stored in a real Redis, step by step."""
    d, X, y = registry_dir
    cand = _register(d, X, y, 3, tmp_path).version
    stable = model_store.current_version(d)
    s = Settings(redis_url=fresh_redis.url, model_dir=d, rollout_plan_cache_s=0)

    async def run() -> list[tuple[float, float]]:
        r = async_client(fresh_redis.url)
        await r.delete("inferpool:rollout:plan")
        ro = Rollout(r, s, "test")
        await ro.start(Mode.canary, cand, "tester", "5,25,50,100", 3600, 10, stable)
        out = []
        for step in range(4):
            plan = await ro.plan()
            got = [(await ro.route(f"key-{step}-{i}", stable))[0] for i in range(4000)]
            out.append((plan.share, got.count(cand) / len(got)))
            await ro.command("advance", "tester", "test")
        log = await rollout_store.audit_log(r)
        assert [e["action"] for e in log][:2] == ["advance", "advance"] and log[-1]["action"] == "start"
        assert log[0]["state"] == "promoted" and log[0]["by"] == "tester"
        await r.aclose()
        return out

    shares = asyncio.run(run())
    print("canary share target -> observed over 4,000 routing decisions:", shares)
    for target, observed in shares:
        assert abs(observed - target) <= 0.03
    assert model_store.current_version(d) == cand  # the last step promoted it
    registry.promote(d, stable, "restore for other tests")


def test_models_command(registry_dir, tmp_path, capsys) -> None:
    from cli.main import main

    d, X, y = registry_dir
    stable = model_store.current_version(d)
    path = tmp_path / "m.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=5, random_state=11).fit(X, y), path)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    argv = ["models", "--model-dir", str(d)]
    xy = ["--train-x", str(tmp_path / "X.npy"), "--train-y", str(tmp_path / "y.npy"), "--runtime", "joblib"]
    assert main([*argv, "register", str(path), *xy]) == 0
    new = capsys.readouterr().out.split("version ")[1].split()[0]
    assert main([*argv, "list"]) == 0
    listing = capsys.readouterr().out
    assert new in listing and f"{stable}" in listing and "stable" in listing
    assert main([*argv, "promote", new, "--reason", "cli test"]) == 0
    assert model_store.current_version(d) == new
    assert main([*argv, "retire", new]) == 1  # serving: refused, with the reason
    assert "is serving" in capsys.readouterr().out
    assert main([*argv, "rollback"]) == 0 and model_store.current_version(d) == stable
    assert main([*argv, "retire", new]) == 0


def test_worker_versions_are_an_lru_with_integrity_checks(registry_dir, tmp_path, monkeypatch) -> None:
    from inferpool.errors import ModelIntegrityError
    from inferpool.settings import get_settings
    from workers.runtime import Runtime
    from workers.versions import VersionCache

    d, X, y = registry_dir
    monkeypatch.setenv("INFERPOOL_MODEL_DIR", str(d))
    monkeypatch.setenv("INFERPOOL_MODEL_CACHE_VERSIONS", "2")  # its own version and one more
    get_settings.cache_clear()
    try:
        model, manifest = model_store.load_model(d)
        base = Runtime(model, manifest, redis=None, runtime="joblib")
        a, b = (_register(d, X, y, seed, tmp_path).version for seed in (21, 22))
        cache = VersionCache()
        assert cache.runtime_for(base, None) is base and cache.runtime_for(base, manifest.version) is base
        rt_a = cache.runtime_for(base, a)
        assert rt_a.manifest.version == a and cache.runtime_for(base, a) is rt_a  # held
        assert cache.runtime_for(base, b).manifest.version == b and cache.held() == [b]  # a evicted
        (d / f"{a}.joblib").write_bytes(b"tampered")
        with pytest.raises(ModelIntegrityError):
            cache.runtime_for(base, a)  # loaded again, checked again: refused, never another version
    finally:
        get_settings.cache_clear()
