"""The registry of model versions: every version in the model directory, which one is stable, and its history.

Versions live where ``inferpool.model_store`` writes them (``<version>.joblib``, ``.json`` manifest, ``.onnx``);
``current`` names the stable version, the one served when no rollout plan exists. Beside them
``registry.json`` keeps the promotions (who, when, which version) so ``rollback`` knows the one before, and
the versions retired (their files removed; their manifests kept, so old jobs still name a known version).
Registering never changes what is served: ``promote`` (or a rollout reaching 100 %) does.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inferpool import model_store
from inferpool.errors import ModelError, RolloutError

REGISTRY_FILE = "registry.json"
MLFLOW_SCHEME = "models:/"


@dataclass(frozen=True)
class Promotion:
    version: str
    at: float
    by: str
    why: str


@dataclass(frozen=True)
class VersionRow:
    """One line of ``inferpool models list``."""

    version: str
    created: float
    estimator: str
    runtime: str
    sha256: str
    stable: bool
    retired: bool


def _read(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / REGISTRY_FILE).read_text())
    except FileNotFoundError:
        return {"promotions": [], "retired": []}


def _write(model_dir: Path, data: dict) -> None:
    # Replace, never rewrite in place: a reader sees the old file or the new one.
    with tempfile.NamedTemporaryFile("w", dir=model_dir, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2)
    os.replace(tmp.name, model_dir / REGISTRY_FILE)


def versions(model_dir: Path) -> list[VersionRow]:
    """Every version with a manifest, oldest first."""
    try:
        stable = model_store.current_version(model_dir)
    except ModelError:
        stable = None
    retired = set(_read(model_dir)["retired"])
    rows = []
    for path in model_dir.glob("*.json"):
        if path.name == REGISTRY_FILE:
            continue
        m = model_store.read_manifest(model_dir, path.stem)
        rows.append(
            VersionRow(m.version, m.created, m.estimator, m.runtime.runtime, m.sha256, m.version == stable,
                       m.version in retired)
        )  # fmt: skip
    return sorted(rows, key=lambda r: r.created)


def known(model_dir: Path, version: str) -> model_store.Manifest:
    """The manifest of a version that can serve; :class:`RolloutError` for an unknown or retired one."""
    if version in _read(model_dir)["retired"]:
        raise RolloutError(f"model version {version} is retired")
    try:
        return model_store.read_manifest(model_dir, version)
    except ModelError as exc:
        raise RolloutError(f"no model version {version} in {model_dir}") from exc


def promotions(model_dir: Path) -> list[Promotion]:
    return [Promotion(**p) for p in _read(model_dir)["promotions"]]


def promote(model_dir: Path, version: str, why: str, by: str | None = None) -> Promotion:
    """Make ``version`` the stable one (``current``), recording who and why."""
    known(model_dir, version)
    data = _read(model_dir)
    if not data["promotions"]:
        # The first promotion through the registry: remember what served before it, so rollback can return.
        try:
            before = model_store.current_version(model_dir)
            data["promotions"].append(asdict(Promotion(before, time.time(), "inferpool", "served before the registry")))
        except ModelError:
            pass
    p = Promotion(version, time.time(), by or _who(), why)
    data["promotions"].append(asdict(p))
    _write(model_dir, data)
    (model_dir / model_store.CURRENT_FILE).write_text(version + "\n")
    return p


def rollback(model_dir: Path, why: str, by: str | None = None) -> Promotion:
    """Promote again the version that was stable before the current one."""
    stable = model_store.current_version(model_dir)
    retired = set(_read(model_dir)["retired"])
    earlier = [p.version for p in promotions(model_dir) if p.version != stable and p.version not in retired]
    if not earlier:
        raise RolloutError(f"no earlier stable version than {stable} to roll back to")
    return promote(model_dir, earlier[-1], why, by)


def retire(model_dir: Path, version: str, in_use: set[str]) -> None:
    """Remove a version's model files (its manifest stays). ``in_use``: versions a rollout plan names."""
    m = known(model_dir, version)
    if version == model_store.current_version(model_dir) or version in in_use:
        raise RolloutError(f"model version {version} is serving; promote or abort first")
    data = _read(model_dir)
    data["retired"].append(version)
    _write(model_dir, data)
    for name in (m.file, m.runtime.file):
        if name:
            (model_dir / name).unlink(missing_ok=True)


def register(
    source: str, X_train: np.ndarray, y_train: np.ndarray, model_dir: Path,
    runtime: model_store.CompileChoice = "auto",
) -> model_store.Manifest:  # fmt: skip
    """Register a local joblib file or an MLflow ``models:/name/version`` URI; never promotes it."""
    if not source.startswith(MLFLOW_SCHEME):
        return model_store.register_model(Path(source), X_train, y_train, model_dir, runtime, promote=False)
    if importlib.util.find_spec("mlflow") is None:  # an optional extra: say which, before any work
        raise RolloutError(f"registering {source} needs the 'mlflow' extra: pip install 'inferpool[mlflow]'")
    import joblib
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(source)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.joblib"
        joblib.dump(model, path)
        return model_store.register_model(path, X_train, y_train, model_dir, runtime, promote=False)


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without /etc/passwd entry
        return f"uid {os.getuid()}"
