"""The model directory: train, register, describe and safely load models.

Layout: ``<model_dir>/<version>.joblib`` beside ``<model_dir>/<version>.json``
(the manifest), ``<model_dir>/<version>.onnx`` when the model compiled (see
``inferpool.compiled``) and ``<model_dir>/current`` naming the served version.
joblib files are pickles, so a worker loads only a file inside the model
directory whose sha256 matches its manifest; the same rule covers the .onnx file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np

from inferpool.compiled import RUNTIME_JOBLIB, RUNTIME_ONNX, OnnxModel, RuntimeInfo, compile_model
from inferpool.errors import ModelError, ModelIntegrityError

SUMMARY_BINS = 10
CURRENT_FILE = "current"
# At train/register time: "auto" compiles where the converter can, "joblib" skips compiling.
CompileChoice = Literal["auto", "joblib"]
# At load time: "auto" follows the manifest, "joblib"/"onnx" force one (onnx fails if none was compiled).
LoadChoice = Literal["auto", "joblib", "onnx"]


@dataclass(frozen=True)
class FeatureSummary:
    """Training distribution of one feature: ``len(edges) == len(proportions) + 1``.

    The outer edges are -inf/+inf (stored as None in JSON) so every input falls in a bin.
    """

    edges: list[float]
    proportions: list[float]
    mean: float
    std: float


@dataclass(frozen=True)
class HeldOut:
    """The model on rows it was not trained on, measured at train/register time (``inferpool.importance``).

    ``importance`` is each feature's permutation importance: how much accuracy falls when that
    column is shuffled (mean over repeats; it can be slightly negative for a feature the model ignores).
    """

    method: str  # e.g. "3-fold cross-fit", "held-out rows"
    n_rows: int
    score: float  # accuracy
    importance: list[float]
    # Share of each manifest class among the held-out predictions: the mix to expect in production.
    predicted_proportions: list[float]


@dataclass(frozen=True)
class Manifest:
    version: str
    sha256: str
    file: str
    n_features: int
    classes: list[int]
    class_proportions: list[float]
    created: float
    estimator: str
    features: list[FeatureSummary] = field(default_factory=list)
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    # Rows the feature summaries were made from: drift tests treat the training bins as a sample of
    # this size. Both None in manifests written before they were recorded.
    n_train: int | None = None
    held_out: HeldOut | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for f in d["features"]:
            f["edges"] = [None if not np.isfinite(e) else e for e in f["edges"]]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        feats = []
        for f in d.get("features", []):
            edges = list(f["edges"])
            edges[0] = -np.inf if edges[0] is None else edges[0]
            edges[-1] = np.inf if edges[-1] is None else edges[-1]
            feats.append(FeatureSummary(edges, f["proportions"], f["mean"], f["std"]))
        held = d.get("held_out")
        runtime = RuntimeInfo.from_json(d.get("runtime"))
        return cls(**{**d, "features": feats, "runtime": runtime, "held_out": HeldOut(**held) if held else None})


def summarize_features(X: np.ndarray, bins: int = SUMMARY_BINS) -> list[FeatureSummary]:
    """Quantile bins of each training feature, kept in the manifest for drift detection."""
    out = []
    for j in range(X.shape[1]):
        col = X[:, j].astype(np.float64)
        inner = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        edges = np.concatenate(([-np.inf], inner, [np.inf]))
        counts, _ = np.histogram(col, bins=edges)
        out.append(
            FeatureSummary(
                edges=[float(e) for e in edges],
                proportions=[float(c) / len(col) for c in counts],
                mean=float(col.mean()),
                std=float(col.std()),
            )
        )
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(
    model: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    model_dir: Path,
    runtime: CompileChoice = "auto",
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    promote: bool = True,
) -> Manifest:
    """Write ``model`` (compiled too, unless ``runtime`` is joblib) and its manifest into ``model_dir``,
    and make it the served version (unless ``promote`` is False: ``inferpool models register``).

    The manifest also records the model's score and permutation importance on rows it was not trained
    on: ``held_out`` (X, y) when given, else cross-fitted on the training rows (``inferpool.importance``).
    """
    from inferpool import importance  # it imports this module's records

    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=model_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    joblib.dump(model, tmp_path)
    digest = _sha256(tmp_path)
    version = digest[:12]
    final = model_dir / f"{version}.joblib"
    os.replace(tmp_path, final)
    if runtime == RUNTIME_JOBLIB:
        compiled = RuntimeInfo(reason="joblib runtime requested")
    else:
        compiled = compile_model(model, np.asarray(X_train), model_dir / f"{version}.onnx")
    classes, counts = np.unique(np.asarray(y_train), return_counts=True)
    class_list = [int(c) for c in getattr(model, "classes_", classes)]
    manifest = Manifest(
        version=version,
        sha256=digest,
        file=final.name,
        n_features=int(X_train.shape[1]),
        classes=class_list,
        class_proportions=[float(c) / counts.sum() for c in counts],
        created=time.time(),
        estimator=type(model).__name__,
        features=summarize_features(np.asarray(X_train, dtype=np.float64)),
        runtime=compiled,
        n_train=int(X_train.shape[0]),
        held_out=importance.measure(model, X_train, y_train, class_list, held_out),
    )
    (model_dir / f"{version}.json").write_text(json.dumps(manifest.to_json(), indent=2))
    if promote:
        (model_dir / CURRENT_FILE).write_text(version + "\n")
    return manifest


def train_reference(
    model_dir: Path,
    n_samples: int = 500,
    n_features: int = 20,
    n_estimators: int = 100,
    seed: int = 42,
    runtime: CompileChoice = "auto",
) -> Manifest:
    """The reference model: a random forest on ``make_classification`` data, fixed seeds."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=n_samples, n_features=n_features, random_state=seed)
    # n_jobs=1: in a worker, joblib threads add a ~35 ms floor to every small call.
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(X, y)
    return save_model(model, X, y, model_dir, runtime)


def ensure_reference(model_dir: Path) -> tuple[Manifest, bool]:
    """The served model's manifest, training the reference model first if the directory has none.

    Returns (manifest, trained now).
    """
    try:
        m = read_manifest(model_dir)
    except ModelError:
        return train_reference(model_dir), True
    if m.estimator == "RandomForestClassifier" and (not m.runtime.versions or m.held_out is None):
        # Our own reference model from before compiled models (or importance) existed: train it again.
        return train_reference(model_dir), True
    return m, False


def register_model(
    model_path: Path,
    X_train: np.ndarray,
    y_train: np.ndarray,
    model_dir: Path,
    runtime: CompileChoice = "auto",
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    promote: bool = True,
) -> Manifest:
    """Register a user's own joblib model, summarised against the data it was trained on.

    The file is loaded here, once, by the person registering it; workers then load
    it only after checking the sha256 recorded now. ``held_out`` (X, y): rows the model never saw,
    for its score and importance; without them both are cross-fitted on the training rows.
    """
    model = joblib.load(model_path)
    if not hasattr(model, "predict"):
        raise ModelError(f"{model_path} holds a {type(model).__name__}, which has no predict()")
    return save_model(model, X_train, y_train, model_dir, runtime, held_out, promote)


def current_version(model_dir: Path) -> str:
    try:
        return (model_dir / CURRENT_FILE).read_text().strip()
    except FileNotFoundError as exc:
        raise ModelError(f"no model in {model_dir}: run `inferpool train`") from exc


def read_manifest(model_dir: Path, version: str | None = None) -> Manifest:
    version = version or current_version(model_dir)
    path = model_dir / f"{version}.json"
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ModelError(f"model version {version} has no manifest in {model_dir}") from exc


def _inside(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if path.parent != root:
        raise ModelIntegrityError(f"manifest points outside the model directory: {name}")
    if not path.is_file():
        raise ModelError(f"model file {path} is missing")
    return path


def _verify(name: str, digest: str, recorded: str | None) -> None:
    if digest != recorded:
        raise ModelIntegrityError(
            f"{name}: sha256 {digest[:12]}… does not match the manifest's {(recorded or '')[:12]}…; refusing to load"
        )


def load_model(model_dir: Path, version: str | None = None, runtime: LoadChoice = "joblib") -> tuple[Any, Manifest]:
    """Load a model version after checking that its file matches the manifest.

    ``runtime``: "joblib" (the default, what callers outside the workers compare against) gives the
    scikit-learn model; "auto" gives the compiled model when the manifest accepted one; "onnx" insists
    on it. Either way the result has ``predict(rows) -> labels`` with the scikit-learn dtype.
    """
    manifest = read_manifest(model_dir, version)
    root = model_dir.resolve()
    info = manifest.runtime
    if runtime == RUNTIME_ONNX and (info.runtime != RUNTIME_ONNX or not info.file):
        raise ModelError(
            f"model version {manifest.version} has no compiled model ({info.reason}); train or register it again"
        )
    if runtime != RUNTIME_JOBLIB and info.runtime == RUNTIME_ONNX and info.file:
        # Hash the very bytes the session is built from: the file cannot change between check and load.
        data = _inside(root, info.file).read_bytes()
        _verify(info.file, hashlib.sha256(data).hexdigest(), info.sha256)
        return OnnxModel(data, info.label_dtype), manifest
    path = _inside(root, manifest.file)
    _verify(path.name, _sha256(path), manifest.sha256)
    return joblib.load(path), manifest
