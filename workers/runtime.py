"""What each worker process holds: the model (loaded once), its manifest and a Redis client."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_init, worker_process_init

from inferpool.compiled import RUNTIME_ONNX, served_runtime
from inferpool.model_store import Manifest, load_model, read_manifest
from inferpool.redis_client import sync_client
from inferpool.settings import get_settings

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


@worker_init.connect
def _import_in_parent(**_: Any) -> None:
    """Import what the model needs once, in the main process, before the pool forks: every process the
    scaler grows later then only builds its session (milliseconds) instead of importing scikit-learn or
    onnxruntime anew (0.7 s of CPU each, measured while the pool grew under load)."""
    s = get_settings()
    try:
        if served_runtime(read_manifest(s.model_dir).runtime, s.model_runtime) == RUNTIME_ONNX:
            import onnxruntime  # noqa: F401  (a session made here would be shared across fork: not that)
        else:
            load_model(s.model_dir)  # unpickling imports the estimator's modules; the object is dropped
    except Exception:
        logger.exception("could not preload the model's libraries; each process will load them itself")


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    # A failed load here would kill the child in a loop; log and let the first task report it.
    try:
        get_runtime()
    except Exception:
        logger.exception("model failed to load in worker process")
