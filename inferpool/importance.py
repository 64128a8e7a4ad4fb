"""What the model uses: permutation importance on rows it was not trained on, at train/register time.

Shuffle one feature's column of held-out rows, predict, and see how much accuracy falls: that needs only
``predict``, so it works for any estimator. Rows the model was trained on would overstate what a model
that memorised them uses, so importance is measured either on rows given as held out, or by
cross-fitting: copies of the estimator (``sklearn.base.clone``) fitted on k-1 folds of the training
rows, each measured on the fold it did not see. The drift verdict weighs each feature's drift by it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from inferpool.model_store import HeldOut

logger = logging.getLogger(__name__)

FOLDS = 3
REPEATS = 5
# Rows of one fold (or of the held-out set) measured: enough to tell a used feature from an ignored one.
MAX_ROWS = 1000
# Cells predicted in one call: shuffled copies of the rows go in batches, not one predict per copy.
CELLS_PER_CALL = 2_000_000


def permutation_drop(model: Any, X: np.ndarray, y: np.ndarray, rng: np.random.Generator, repeats: int = REPEATS):
    """(accuracy on ``X``, predictions, accuracy drop per feature averaged over ``repeats`` shuffles)."""
    n, d = X.shape
    base_pred = np.asarray(model.predict(X))
    base = float(np.mean(base_pred == y))
    per_call = max(1, CELLS_PER_CALL // max(1, repeats * n * d))
    drops = np.empty(d)
    for start in range(0, d, per_call):
        cols = range(start, min(d, start + per_call))
        copies = np.repeat(X[None], len(cols) * repeats, axis=0)
        for k, j in enumerate(cols):
            for r in range(repeats):
                copies[k * repeats + r, :, j] = X[rng.permutation(n), j]
        pred = np.asarray(model.predict(copies.reshape(-1, d))).reshape(len(cols) * repeats, n)
        acc = (pred == y).mean(axis=1).reshape(len(cols), repeats).mean(axis=1)
        drops[start : start + len(cols)] = base - acc
    return base, base_pred, drops


def _proportions(pred: np.ndarray, classes: list[Any]) -> list[float]:
    got = np.asarray(pred).astype(str)
    return [float(np.mean(got == str(c))) for c in classes]


def _subsample(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(X) <= MAX_ROWS:
        return X, y
    idx = rng.choice(len(X), MAX_ROWS, replace=False)
    return X[idx], y[idx]


def on_rows(model: Any, X: np.ndarray, y: np.ndarray, classes: list[Any], method: str, seed: int = 0) -> HeldOut:
    """Importance of the fitted ``model`` itself, measured on ``X, y``."""
    rng = np.random.default_rng(seed)
    X, y = _subsample(np.asarray(X, dtype=np.float64), np.asarray(y), rng)
    score, pred, drops = permutation_drop(model, X, y, rng)
    return HeldOut(method, len(X), score, [float(v) for v in drops], _proportions(pred, classes))


def cross_fitted(model: Any, X: np.ndarray, y: np.ndarray, classes: list[Any], folds: int = FOLDS, seed: int = 0):
    """Importance of copies of ``model``'s estimator, each fitted without the fold it is measured on."""
    from sklearn.base import clone

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    drops, correct, preds = [], 0, []
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        fitted = clone(model).fit(X[train], y[train])
        Xf, yf = _subsample(X[fold], y[fold], rng)
        score, pred, drop = permutation_drop(fitted, Xf, yf, rng)
        drops.append(drop * len(Xf))
        correct += score * len(Xf)
        preds.append(pred)
    n = sum(len(p) for p in preds)
    importance = [float(v) for v in np.sum(drops, axis=0) / n]
    return HeldOut(f"{folds}-fold cross-fit", n, correct / n, importance, _proportions(np.concatenate(preds), classes))


def measure(
    model: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    classes: list[Any],
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> HeldOut | None:
    """The manifest's ``held_out`` record: on ``held_out`` rows when given, else cross-fitted on the training
    rows; None (drift then weighs every feature the same) when neither works for this model."""
    try:
        if held_out is not None:
            return on_rows(model, held_out[0], held_out[1], classes, "held-out rows")
        if len(X_train) >= 2 * FOLDS:
            return cross_fitted(model, X_train, y_train, classes)
    except Exception as exc:  # a model that cannot be cloned or refitted: say so, keep registering it
        logger.warning("permutation importance unavailable for %s: %s", type(model).__name__, exc)
    return None
