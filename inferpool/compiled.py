"""Compiled models: a scikit-learn model converted to ONNX once, checked, and served by onnxruntime.

Conversion happens at train/register time only (``compile_model``): importing skl2onnx and onnx
costs seconds of CPU on a loaded host, so workers never do it; they import onnxruntime, lazily,
and only when the manifest says the compiled model passed its check (``OnnxModel``).
A compiled model is accepted only if it predicts exactly what the original does on every
training row and on a seeded random sample around them; otherwise the joblib model serves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RUNTIME_ONNX = "onnx"
RUNTIME_JOBLIB = "joblib"
# Opsets every onnxruntime since 1.14 runs; the tree and linear operators need nothing newer.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
CHECK_RANDOM_ROWS = 20_000
# The random sample spans each feature's training range widened by this share on both sides:
# inputs a little outside what the model saw are where two implementations could part ways.
CHECK_MARGIN = 0.1
CHECK_SEED = 0


@dataclass(frozen=True)
class RuntimeInfo:
    """Which runtime serves a model version, and the evidence for it (kept in the manifest)."""

    runtime: str = RUNTIME_JOBLIB
    file: str | None = None  # the .onnx file, inside the model directory
    sha256: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # skl2onnx, onnx, onnxruntime at conversion
    rows_checked: int = 0
    disagreements: int = 0
    reason: str | None = None  # why the joblib model serves, when it does
    label_dtype: str | None = None  # dtype of the original predict(), which the compiled model returns too

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> RuntimeInfo:
        if d is None:  # a manifest written before compiled models existed
            return cls(reason="manifest has no runtime record")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def served_runtime(info: RuntimeInfo, setting: str) -> str:
    """The runtime that serves given the manifest and ``INFERPOOL_MODEL_RUNTIME`` (``joblib`` forces joblib)."""
    return RUNTIME_JOBLIB if setting == RUNTIME_JOBLIB else info.runtime


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(source: bytes | str) -> Any:
    import onnxruntime as ort

    # One thread per process: the worker pool is the parallelism; more threads only contend for the cores.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An onnxruntime session with scikit-learn's ``predict`` contract: same labels, same dtype."""

    def __init__(self, source: bytes | str, label_dtype: str | None) -> None:
        self.session = _session(source)
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        # Classifiers give "label" (and probabilities, never computed here); regressors one output.
        self._output = "label" if "label" in outputs else outputs[0]
        self._dtype = np.dtype(label_dtype) if label_dtype else None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rows, dtype=np.float32)
        out = self.session.run([self._output], {self._input: x})[0]
        out = out.reshape(len(x)) if out.ndim == 2 and out.shape[1] == 1 else out
        return out.astype(self._dtype, copy=False) if self._dtype is not None else out


def check_rows(X_train: np.ndarray, n_random: int = CHECK_RANDOM_ROWS, seed: int = CHECK_SEED) -> np.ndarray:
    """Training rows plus ``n_random`` rows drawn per feature uniformly over a widened training range."""
    X = np.asarray(X_train, dtype=np.float32)
    lo, hi = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
    pad = np.maximum(hi - lo, 1.0) * CHECK_MARGIN
    rnd = np.random.default_rng(seed).uniform(lo - pad, hi + pad, size=(n_random, X.shape[1]))
    return np.vstack([X, rnd.astype(np.float32)])


def disagreements(expected: np.ndarray, got: np.ndarray) -> int:
    if expected.shape != got.shape:
        return int(len(expected))
    return int(np.count_nonzero(expected != got))


def _convert(model: Any, n_features: int) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    # zipmap=False gives labels and a probability matrix instead of a list of dicts; only classifiers take it.
    options = {id(model): {"zipmap": False}} if is_classifier(model) else None
    onx = to_onnx(
        model,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        options=options,
        target_opset=TARGET_OPSET,
    )
    return onx.SerializeToString()


def converter_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx

    return {"skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def compile_model(model: Any, X_train: np.ndarray, out_path: Path, n_random: int = CHECK_RANDOM_ROWS) -> RuntimeInfo:
    """Convert ``model``, check it against the original, and write ``out_path`` only if it agrees everywhere.

    Never raises for a model it cannot compile: it returns a joblib ``RuntimeInfo`` with the reason.
    """
    name = type(model).__name__
    try:
        versions = converter_versions()
    except ImportError as exc:
        return _fallback(name, f"converter not installed: {exc}")
    try:
        blob = _convert(model, int(np.shape(X_train)[1]))
    except Exception as exc:
        # skl2onnx says "Unable to find a shape calculator" for estimators it has no converter for.
        unsupported = type(exc).__name__ in ("MissingShapeCalculator", "MissingConverter")
        why = "skl2onnx cannot convert" if unsupported else "conversion failed"
        return _fallback(name, f"{why} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", versions)
    X = check_rows(X_train, n_random)
    expected = np.asarray(model.predict(X))
    dtype = expected.dtype.name if expected.dtype.kind in "biuf" else expected.dtype.str
    try:
        got = OnnxModel(blob, dtype).predict(X)
    except Exception as exc:  # a graph onnxruntime refuses to load or run
        return _fallback(name, f"onnxruntime failed on {name}: {type(exc).__name__}: {str(exc)[:200]}", versions)
    bad = disagreements(expected, got)
    if bad:
        return _fallback(
            name, f"compiled {name} disagrees with the original on {bad} of {len(X)} rows", versions, len(X), bad
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(blob)
    os.replace(tmp.name, out_path)  # a reader never sees half a file
    return RuntimeInfo(
        runtime=RUNTIME_ONNX,
        file=out_path.name,
        sha256=_sha256(out_path),
        versions=versions,
        rows_checked=len(X),
        disagreements=0,
        label_dtype=dtype,
    )


def _fallback(
    name: str, reason: str, versions: dict[str, str] | None = None, rows: int = 0, bad: int = 0
) -> RuntimeInfo:
    logger.warning("%s will be served by joblib: %s", name, reason)
    return RuntimeInfo(versions=versions or {}, rows_checked=rows, disagreements=bad, reason=reason)
