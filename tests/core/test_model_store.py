"""The model store: manifests, integrity checks before loading, registering a user's model.

Compiled (onnx) models have their own tests in tests/core/test_compiled_runtime.py.
"""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from inferpool import model_store
from inferpool.errors import ModelError, ModelIntegrityError


def test_reference_manifest(tmp_path):
    m = model_store.train_reference(tmp_path, n_estimators=5)
    doc = json.loads((tmp_path / f"{m.version}.json").read_text())
    assert doc["n_features"] == 20 and doc["classes"] == [0, 1]
    assert doc["sha256"].startswith(m.version)
    assert len(doc["features"]) == 20
    f0 = doc["features"][0]
    assert f0["edges"][0] is None and f0["edges"][-1] is None  # open outer bins
    assert abs(sum(f0["proportions"]) - 1) < 1e-9
    assert doc["runtime"]["runtime"] == "onnx" and doc["runtime"]["file"] == f"{m.version}.onnx"
    model, loaded = model_store.load_model(tmp_path)
    assert loaded.version == m.version and model.n_estimators == 5
    assert model_store.Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_tampered_model_is_refused(tmp_path):
    m = model_store.train_reference(tmp_path, n_estimators=3)
    path = tmp_path / m.file
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ModelIntegrityError, match="does not match"):
        model_store.load_model(tmp_path)


def test_manifest_pointing_outside_model_dir_is_refused(tmp_path):
    m = model_store.train_reference(tmp_path / "models", n_estimators=3)
    mpath = tmp_path / "models" / f"{m.version}.json"
    doc = json.loads(mpath.read_text())
    doc["file"] = "../evil.joblib"
    mpath.write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match="outside"):
        model_store.load_model(tmp_path / "models")


def test_no_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="inferpool train"):
        model_store.load_model(tmp_path)


def test_register_users_model(tmp_path):
    X = np.random.default_rng(0).normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(X, y), tmp_path / "mine.joblib")
    m = model_store.register_model(tmp_path / "mine.joblib", X, y, tmp_path / "models")
    assert m.estimator == "LogisticRegression" and m.n_features == 4
    assert m.runtime.runtime == "onnx" and m.runtime.disagreements == 0
    model, _ = model_store.load_model(tmp_path / "models")
    assert (model.predict(X) == y).mean() > 0.9
    compiled, _ = model_store.load_model(tmp_path / "models", runtime="auto")
    assert np.array_equal(compiled.predict(X), model.predict(X.astype(np.float32)))


def test_register_without_compiling(tmp_path):
    X = np.random.default_rng(0).normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(X, y), tmp_path / "mine.joblib")
    m = model_store.register_model(tmp_path / "mine.joblib", X, y, tmp_path / "models", runtime="joblib")
    assert m.runtime.runtime == "joblib" and m.runtime.reason == "joblib runtime requested"
    model, _ = model_store.load_model(tmp_path / "models", runtime="auto")
    assert isinstance(model, LogisticRegression)
