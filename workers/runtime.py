"""What each worker process holds: the model (loaded once), its manifest and a Redis client.

``check_model`` is the main process's look at the model before it consumes anything (see
``workers.serving``); ``get_runtime`` is the pool process's load.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from inferpool.compiled import RUNTIME_ONNX, served_runtime
from inferpool.errors import ModelError, ModelIntegrityError
from inferpool.model_store import Manifest, load_model, read_manifest
from inferpool.redis_client import sync_client
from inferpool.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    model: Any
    manifest: Manifest
    redis: redis.Redis
    runtime: str  # what serves: "onnx" (compiled) or "joblib"


_runtime: Runtime | None = None


_loading = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, loading the model on first use (prefork children load it at init; a threads
    pool's threads share one, and one onnxruntime session serves concurrent calls)."""
    global _runtime
    if _runtime is not None:
        return _runtime
    with _loading:
        if _runtime is not None:
            return _runtime
        s = get_settings()
        model, manifest = load_model(s.model_dir, runtime=s.model_runtime)
        served = served_runtime(manifest.runtime, s.model_runtime)
        _runtime = Runtime(model=model, manifest=manifest, redis=sync_client(s.redis_url), runtime=served)
        logger.info(
            "model %s loaded (%s, %d features, runtime %s)",
            manifest.version, manifest.estimator, manifest.n_features, served,
        )  # fmt: skip
    return _runtime


def check_model(s: Settings) -> Manifest:
    """What the main process checks before it consumes: the served version's manifest, its file inside the
    model directory, and that file's sha256. Raises :class:`ModelError` (or its integrity subclass).

    It also imports what the model needs once, before the pool forks: every process the scaler grows later
    then only builds its session (milliseconds) instead of importing scikit-learn or onnxruntime anew (0.7 s
    of CPU each, measured while the pool grew under load). An onnxruntime session is not built here: one
    made before the fork would be shared by the pool processes.
    """
    manifest = read_manifest(s.model_dir)
    info = manifest.runtime
    if served_runtime(info, s.model_runtime) == RUNTIME_ONNX and info.file:
        _verify_file(s.model_dir, info.file, info.sha256)
        import onnxruntime  # noqa: F401
    else:
        load_model(s.model_dir)  # checks the sha256, and unpickling imports the estimator's modules
    return manifest


def _verify_file(model_dir: Path, name: str, recorded: str | None) -> None:
    """The rule ``load_model`` applies: a file inside the model directory whose sha256 is the manifest's."""
    root = model_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ModelIntegrityError(f"manifest points outside the model directory: {name}")
    if not path.is_file():
        raise ModelError(f"model file {path} is missing")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != recorded:
        raise ModelIntegrityError(f"{name}: sha256 does not match the manifest's; refusing to load")
