"""Turning request bodies into a float array, with errors that name the field and the rule.

Large bodies are parsed off the event loop by the caller (``asyncio.to_thread``):
a 200,000-row JSON body takes most of a second to parse.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import orjson

from inferpool.errors import InputError


def check_rows(X: np.ndarray, n_features: int, max_rows: int, field: str = "instances") -> np.ndarray:
    """Shape, finiteness and size rules shared by every route."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError(field, "must be a non-empty list of rows")
    if X.shape[1] != n_features:
        raise InputError(field, f"each row must have {n_features} features, got {X.shape[1]}")
    if X.shape[0] > max_rows:
        raise InputError(field, f"at most {max_rows} rows per request, got {X.shape[0]}")
    if not np.isfinite(X).all():
        row = int(np.argwhere(~np.isfinite(X))[0][0])
        raise InputError(f"{field}.{row}", "values must be finite numbers (no NaN or Infinity)")
    return X


def _rows_array(rows: object, field: str) -> np.ndarray:
    if not isinstance(rows, list) or not rows:
        raise InputError(field, "must be a non-empty list of rows")
    width = len(rows[0]) if isinstance(rows[0], list) else -1
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != width:
            raise InputError(f"{field}.{i}", f"every row must be a list of the same length ({width})")
    try:
        X = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        X = None
    if X is None or any(isinstance(v, bool | str) for r in rows[:1] for v in r):
        for i, r in enumerate(rows):
            for j, v in enumerate(r):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise InputError(f"{field}.{i}.{j}", "must be a number")
    return X


def parse_json_job(body: bytes) -> tuple[np.ndarray, int]:
    """``{"instances": [[...]], "work_ms": 0}`` -> (rows, work_ms)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError("body", "must be a JSON object with an 'instances' field")
    unknown = set(doc) - {"instances", "work_ms"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field")
    if "instances" not in doc:
        raise InputError("instances", "field required")
    work_ms = doc.get("work_ms", 0)
    if isinstance(work_ms, bool) or not isinstance(work_ms, int) or work_ms < 0:
        raise InputError("work_ms", "must be a non-negative integer")
    return _rows_array(doc["instances"], "instances"), work_ms


def parse_csv(body: bytes) -> np.ndarray:
    """CSV of numbers, one row per line; a first line that is not numeric is taken as a header."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("body", "CSV must be UTF-8 text") from exc
    lines = [r for r in csv.reader(io.StringIO(text)) if r]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]
    if not lines:
        raise InputError("body", "CSV holds no rows")
    width = len(lines[0])
    out = np.empty((len(lines), width), dtype=np.float64)
    for i, r in enumerate(lines):
        if len(r) != width:
            raise InputError(f"row {i + 1}", f"has {len(r)} columns, expected {width}")
        try:
            out[i] = [float(v) for v in r]
        except ValueError as exc:
            raise InputError(f"row {i + 1}", "every value must be a number") from exc
    return out


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def parse_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` file of a 2-D numeric array. ``allow_pickle=False``: object arrays are refused."""
    try:
        X = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError("body", f"not a readable .npy array of numbers ({exc})") from exc
    if X.dtype.kind not in "iuf":
        raise InputError("body", f".npy array must be numeric, got dtype {X.dtype}")
    return X.astype(np.float64, copy=False)
