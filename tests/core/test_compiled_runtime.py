"""Compiled models: converted once with skl2onnx, checked against the original, served by onnxruntime.

The in-process tests use real estimators and real conversions; the last tests go through a real
redis-server, real Celery workers and a real API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys

import httpx
import joblib
import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cli import main as cli
from inferpool import model_store
from inferpool.compiled import CHECK_RANDOM_ROWS, OnnxModel
from inferpool.errors import ModelError, ModelIntegrityError
from tests.support.jobs import wait_job
from tests.support.monitoring import scrape, value, worker_metrics_url
from tests.support.waiting import wait_until

N_FEATURES = 20


def _data(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(seed).normal(size=(n, d))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)


def _register(tmp_path, model, X, y, **kw) -> model_store.Manifest:
    joblib.dump(model.fit(X, y), tmp_path / "mine.joblib")
    return model_store.register_model(tmp_path / "mine.joblib", X, y, tmp_path / "models", **kw)


def test_reference_forest_compiles_and_predicts_as_sklearn(tmp_path):
    m = model_store.train_reference(tmp_path)
    rt = m.runtime
    assert rt.runtime == "onnx" and rt.reason is None
    assert rt.file == f"{m.version}.onnx"
    assert rt.sha256 == hashlib.sha256((tmp_path / rt.file).read_bytes()).hexdigest()
    assert set(rt.versions) == {"skl2onnx", "onnx", "onnxruntime"}
    assert rt.rows_checked == 500 + CHECK_RANDOM_ROWS and rt.disagreements == 0
    assert json.loads((tmp_path / f"{m.version}.json").read_text())["runtime"]["runtime"] == "onnx"

    compiled, _ = model_store.load_model(tmp_path, runtime="auto")
    original, _ = model_store.load_model(tmp_path)  # the default stays the scikit-learn model
    assert isinstance(compiled, OnnxModel) and type(original).__name__ == "RandomForestClassifier"
    X = np.random.default_rng(7).normal(size=(5000, N_FEATURES)).astype(np.float32)
    got, want = compiled.predict(X), original.predict(X)
    assert got.dtype == want.dtype == np.int64
    assert np.array_equal(got, want)
    assert compiled.predict(X[:1]).tolist() == want[:1].tolist()  # one row, as the compat route sends
    assert np.array_equal(compiled.predict(X[:3].astype(np.float64)), want[:3])  # float64 rows are cast


@pytest.mark.parametrize(
    "make",
    [
        lambda: GradientBoostingClassifier(n_estimators=30, random_state=0),
        lambda: make_pipeline(StandardScaler(), LogisticRegression()),
    ],
    ids=["gradient-boosting", "scaler+logistic-pipeline"],
)
def test_other_estimators_compile(tmp_path, make):
    X, y = _data()
    m = _register(tmp_path, make(), X, y)
    assert m.runtime.runtime == "onnx", m.runtime.reason
    compiled, _ = model_store.load_model(tmp_path / "models", runtime="onnx")
    original = joblib.load(tmp_path / "mine.joblib")
    Xn = np.random.default_rng(3).normal(scale=2, size=(3000, X.shape[1])).astype(np.float32)
    assert np.array_equal(compiled.predict(Xn), original.predict(Xn))


def test_unsupported_estimator_is_served_by_joblib(tmp_path, caplog):
    X, y = _data()
    with caplog.at_level(logging.WARNING, logger="inferpool.compiled"):
        m = _register(tmp_path, NearestCentroid(), X, y)
    rt = m.runtime
    assert rt.runtime == "joblib" and rt.file is None
    assert "skl2onnx cannot convert NearestCentroid" in rt.reason
    assert "NearestCentroid" in caplog.text
    assert not list((tmp_path / "models").glob("*.onnx"))
    model, _ = model_store.load_model(tmp_path / "models", runtime="auto")
    assert isinstance(model, NearestCentroid)
    with pytest.raises(ModelError, match="no compiled model"):
        model_store.load_model(tmp_path / "models", runtime="onnx")


def test_disagreeing_compilation_is_refused(tmp_path):
    # 20 fully grown extra trees tie 10-10 on many rows off the training data: scikit-learn takes the
    # first class, onnxruntime's float32 sums lean either way. The check must catch it and keep joblib.
    X, y = _data(500, N_FEATURES, seed=42)
    m = _register(tmp_path, ExtraTreesClassifier(n_estimators=20, random_state=0), X, y)
    assert m.runtime.runtime == "joblib"
    assert m.runtime.disagreements > 0 and "disagrees" in m.runtime.reason
    assert m.runtime.rows_checked == 500 + CHECK_RANDOM_ROWS
    assert not list((tmp_path / "models").glob("*.onnx"))


def test_joblib_runtime_requested_on_the_command_line(tmp_path, capsys):
    assert cli.main(["train", "--model-dir", str(tmp_path), "--trees", "5", "--runtime", "joblib"]) == 0
    m = model_store.read_manifest(tmp_path)
    assert m.runtime.runtime == "joblib" and m.runtime.reason == "joblib runtime requested"
    assert not list(tmp_path.glob("*.onnx"))
    assert "runtime joblib" in capsys.readouterr().out

    X, y = _data()
    joblib.dump(LogisticRegression().fit(X, y), tmp_path / "lr.joblib")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    argv = ["register", str(tmp_path / "lr.joblib"), "--train-x", str(tmp_path / "x.npy")]
    assert cli.main([*argv, "--train-y", str(tmp_path / "y.npy"), "--model-dir", str(tmp_path / "r")]) == 0
    assert model_store.read_manifest(tmp_path / "r").runtime.runtime == "onnx"  # auto by default
    assert "runtime onnx" in capsys.readouterr().out


def test_tampered_onnx_file_is_refused(tmp_path):
    m = model_store.train_reference(tmp_path, n_estimators=5)
    path = tmp_path / m.runtime.file
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ModelIntegrityError, match="does not match"):
        model_store.load_model(tmp_path, runtime="auto")
    model, _ = model_store.load_model(tmp_path, runtime="joblib")  # the joblib file itself is intact
    assert model.n_estimators == 5


def test_onnx_file_outside_model_dir_is_refused(tmp_path):
    m = model_store.train_reference(tmp_path / "models", n_estimators=5)
    mpath = tmp_path / "models" / f"{m.version}.json"
    doc = json.loads(mpath.read_text())
    (tmp_path / "evil.onnx").write_bytes((tmp_path / "models" / m.runtime.file).read_bytes())
    doc["runtime"]["file"] = "../evil.onnx"  # same bytes, same sha256: only the place is wrong
    mpath.write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match="outside"):
        model_store.load_model(tmp_path / "models", runtime="auto")


def test_manifest_without_runtime_loads_as_joblib(tmp_path):
    m = model_store.train_reference(tmp_path, n_estimators=5)
    mpath = tmp_path / f"{m.version}.json"
    doc = json.loads(mpath.read_text())
    del doc["runtime"]
    mpath.write_text(json.dumps(doc))
    old = model_store.read_manifest(tmp_path)
    assert old.runtime.runtime == "joblib" and old.runtime.reason
    model, _ = model_store.load_model(tmp_path, runtime="auto")
    assert type(model).__name__ == "RandomForestClassifier"
    assert model_store.Manifest.from_json(old.to_json()) == old  # and it round-trips


def test_model_runtime_setting_forces_joblib(tmp_path, monkeypatch):
    """A worker process obeys INFERPOOL_MODEL_RUNTIME=joblib though a compiled file exists, and never
    imports the converter (checked in a fresh interpreter: this one has imported it already)."""
    model_store.train_reference(tmp_path, n_estimators=5)
    probe = (
        "import sys; from workers.runtime import get_runtime; rt = get_runtime(); "
        "print(rt.runtime, type(rt.model).__name__, 'skl2onnx' in sys.modules or 'onnx' in sys.modules)"
    )
    env = {"INFERPOOL_MODEL_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"}
    for setting, want in (("joblib", "joblib RandomForestClassifier False"), ("auto", "onnx OnnxModel False")):
        monkeypatch.setenv("INFERPOOL_MODEL_RUNTIME", setting)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == want, out.stdout


# --- through real workers --------------------------------------------------------------------


def test_compiled_model_served_through_real_workers(stack_factory, model_dir, reference_model):
    """The session's reference forest (compiled at training) answers through the API exactly as sklearn does."""
    assert model_store.read_manifest(model_dir).runtime.runtime == "onnx"
    st = stack_factory()
    worker = st.start_worker("online", concurrency=1)
    forced = st.start_worker("work", concurrency=1, INFERPOOL_MODEL_RUNTIME="joblib")
    st.start_api()
    X = np.random.default_rng(21).normal(size=(300, N_FEATURES))
    want = reference_model.predict(X.astype(np.float32)).tolist()
    with httpx.Client(base_url=st.url, timeout=30) as c:
        m = c.get("/v1/models").json()
        assert m["runtime"]["runtime"] == "onnx" and m["runtime"]["disagreements"] == 0
        one = [c.post("/v1/predict", json={"instances": [row]}).json()["predictions"][0] for row in X[:20].tolist()]
        assert one == want[:20]
        compat = c.post("/predict", json={"X": X[20].tolist()}).json()
        assert compat == {"prediction": want[20], "model_version": m["version"]}
        r = c.post("/v1/jobs", json={"instances": X.tolist()})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["predictions"] == want
    labels = {"version": m["version"], "sha256": m["sha256"]}
    for proc, runtime in ((worker, "onnx"), (forced, "joblib")):
        url = worker_metrics_url(st.client, proc.node)
        what = f"{proc.node} model_info runtime={runtime}"
        wait_until(
            lambda u=url, r=runtime: value(scrape(u), "inferpool_model_info", **labels, runtime=r) == 1, 15, what
        )
    assert value(scrape(f"{st.url}/metrics"), "inferpool_model_info", runtime="onnx") == 1
    cmd = [sys.executable, "-m", "cli.main", "status", "--url", st.url, "--frames", "1"]
    out = subprocess.run(cmd, env=st.env, capture_output=True, text=True, timeout=60)
    assert f"model {m['version']} (RandomForestClassifier, runtime onnx)" in out.stdout, out.stderr


def test_unsupported_model_reason_in_v1_models(stack_factory, tmp_path):
    X, y = _data(300, N_FEATURES)
    _register(tmp_path, NearestCentroid(), X, y)
    st = stack_factory(INFERPOOL_MODEL_DIR=str(tmp_path / "models"))
    st.start_api()
    body = httpx.get(f"{st.url}/v1/models", timeout=10).json()
    assert body["estimator"] == "NearestCentroid"
    assert body["runtime"]["runtime"] == "joblib"
    assert "skl2onnx cannot convert NearestCentroid" in body["runtime"]["reason"]
    assert value(scrape(f"{st.url}/metrics"), "inferpool_model_info", runtime="joblib") == 1
