"""Turning request bodies into a float array, with errors that name the field and the rule.

Large bodies are parsed off the event loop by the caller (``asyncio.to_thread``):
a 200,000-row JSON body takes most of a second to parse.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable

import numpy as np
import orjson
from starlette.requests import Request

from inferpool import drift
from inferpool.errors import InputError, MalformedBody, UnsupportedMediaType

logger = logging.getLogger(__name__)

# Rows travel and reach the trees as float32: a finite float64 beyond this would arrive as infinity.
FEATURE_ABS_MAX = float(np.finfo(np.float32).max)
NOT_FINITE = "values must be finite numbers (no NaN or Infinity)"
OUT_OF_RANGE = f"values must lie within +-{FEATURE_ABS_MAX:.4g} (float32)"
# A field naming one cell: "instances.3.7", "X.7" (a one-row body), CSV's 1-based "row 4, column 8".
_CELL = re.compile(r"(?:instances\.(\d+)\.(\d+)|X\.(\d+)|row (\d+), column (\d+))")
# Refused rows of one request counted for drift; they are sampled into a window of ~2,000 anyway.
MAX_REFUSED_ROWS = 10_000


class RefusedValues(InputError):
    """Raised when cells hold no usable number; ``cells`` lists (row, feature) of the refused ones, for drift."""

    def __init__(self, field: str, message: str, cells: list[tuple[int, int]]) -> None:
        super().__init__(field, message)
        self.cells = cells


def refused_rows(fields: Iterable[str], cells: Iterable[tuple[int, int]] = ()) -> list[list[int]]:
    """The features each refused row was refused for, from error fields and (row, feature) cells."""
    rows: dict[int, set[int]] = {}
    for i, j in cells:
        rows.setdefault(i, set()).add(j)
    for f in fields:
        m = _CELL.fullmatch(f)
        if m is not None:
            a, b, c, d, e = m.groups()
            i, j = (int(a), int(b)) if a else (0, int(c)) if c else (int(d) - 1, int(e) - 1)
            rows.setdefault(i, set()).add(j)
    return [sorted(v) for v in rows.values()]


async def record_refusal(request: Request, fields: Iterable[str], cells: Iterable[tuple[int, int]] = ()) -> None:
    """Hook of the 422 answers (``api/errors.py``): refused cells go into the drift window, so a feature
    that turns missing or out of range drifts although none of its values reach a worker. Best effort:
    monitoring never changes the answer."""
    st = getattr(request.app.state, "api", None)
    rows = refused_rows(fields, cells)
    if st is None or not rows:
        return
    s = st.settings
    try:
        await drift.arecord_refusals(st.redis, rows[:MAX_REFUSED_ROWS], s.drift_sample_rate, s.drift_window)
    except Exception as exc:  # Redis down: the 422 stands, the refusal goes uncounted
        logger.debug("refusal not recorded for drift: %s", type(exc).__name__)


def check_rows(X: np.ndarray, n_features: int, max_rows: int, field: str = "instances") -> np.ndarray:
    """Shape, finiteness and size rules shared by every route."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError(field, "must be a non-empty list of rows")
    if X.shape[1] != n_features:
        raise InputError(field, f"each row must have {n_features} features, got {X.shape[1]}")
    if X.shape[0] > max_rows:
        raise InputError(field, f"at most {max_rows} rows per request, got {X.shape[0]}")
    return check_values(X, field)


def check_values(X: np.ndarray, field: str, flat: bool = False) -> np.ndarray:
    """Every value finite and within float32; the error names the first offending cell.

    ``flat``: the field is one row (``/predict``'s ``X``), so cells are named ``X.j``, not ``X.0.j``.
    """
    with np.errstate(invalid="ignore"):
        ok = np.abs(X) <= FEATURE_ABS_MAX  # False for NaN and Infinity too: one pass over the rows
    if ok.all():
        return X
    bad_rows = np.flatnonzero(~ok.all(axis=1))[:MAX_REFUSED_ROWS]
    cells = [(int(bad_rows[r]), int(j)) for r, j in np.argwhere(~ok[bad_rows])]
    i, j = cells[0]
    where = f"{field}.{j}" if flat else f"{field}.{i}.{j}"
    raise RefusedValues(where, OUT_OF_RANGE if np.isfinite(X[i, j]) else NOT_FINITE, cells)


def _first_bad_value(rows: list, field: str) -> None:
    """The slow path: find and name the first value that is not a usable number."""
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InputError(f"{field}.{i}.{j}", "must be a number")
            if isinstance(v, int) and abs(v) > FEATURE_ABS_MAX:
                raise InputError(f"{field}.{i}.{j}", OUT_OF_RANGE)


def _rows_array(rows: object, field: str, may_hold_bools: bool = True) -> np.ndarray:
    if not isinstance(rows, list) or not rows:
        raise InputError(field, "must be a non-empty list of rows")
    width = len(rows[0]) if isinstance(rows[0], list) else -1
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != width:
            raise InputError(f"{field}.{i}", f"every row must be a list of the same length ({width})")
    try:
        # dtype inferred, not forced: strings, nulls, objects and nested lists show up as a
        # non-numeric dtype or a third dimension, instead of being coerced ("1.5" -> 1.5, null -> NaN).
        X = np.array(rows)
    except (TypeError, ValueError, OverflowError):
        X = None
    if X is None or X.dtype.kind not in "iuf" or X.ndim != 2 or may_hold_bools:
        # true/false next to numbers become 1.0/0.0 in a float array: only a scan tells them apart.
        _first_bad_value(rows, field)
        if X is None or X.dtype.kind not in "iuf":
            X = np.asarray(rows, dtype=np.float64)  # integers beyond 64 bits: numbers, but an object array
    return X.astype(np.float64, copy=False)


def _load_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses the NaN and Infinity tokens and integers beyond 64 bits; Python's parser reads
    # them, so such a body is answered with the rule it breaks (422), not called malformed (400).
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedBody("body", f"not valid JSON ({exc})") from exc


def parse_json_job(body: bytes) -> tuple[np.ndarray, int]:
    """``{"instances": [[...]], "work_ms": 0}`` -> (rows, work_ms)."""
    doc = _load_json(body)
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
    # Scanning every value costs ~1 s per million; only a body holding a JSON true/false needs it.
    may_hold_bools = b"true" in body or b"false" in body
    return _rows_array(doc["instances"], "instances", may_hold_bools), work_ms


def parse_csv(body: bytes) -> np.ndarray:
    """CSV of numbers, one row per line; a first line that is not numeric is taken as a header."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody("body", "CSV must be UTF-8 text") from exc
    try:
        lines = [r for r in csv.reader(io.StringIO(text)) if r]
    except csv.Error as exc:
        raise MalformedBody("body", f"not readable as CSV ({exc})") from exc
    # A header is a first line with no number in it; a data line with a typo is an error, not a header.
    if lines and not any(_is_number(v) for v in lines[0]):
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
        except ValueError:
            j = next(j for j, v in enumerate(r) if not _is_number(v))
            raise InputError(f"row {i + 1}, column {j + 1}", f"{r[j][:40]!r} is not a number") from None
    return out


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def parse_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` file of a 2-D numeric array. ``allow_pickle=False``: object arrays are refused."""
    try:
        X = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError) as exc:
        raise MalformedBody("body", f"not a readable .npy array of numbers ({exc})") from exc
    except MemoryError:
        # A header may declare any shape; numpy allocates it before finding the data missing.
        raise MalformedBody("body", ".npy header declares an array larger than the body") from None
    if not isinstance(X, np.ndarray):  # an .npz archive loads as a mapping of arrays
        raise MalformedBody("body", "expected one .npy array, not an .npz archive")
    if X.dtype.kind not in "iuf":
        raise InputError("body", f".npy array must be numeric, got dtype {X.dtype}")
    return X.astype(np.float64, copy=False)


async def require_json(request: Request) -> None:
    """Dependency of the JSON-body routes: another content type is a 415, as on ``/v1/jobs``.

    No content type at all is read as JSON (FastAPI does the same), so ``curl -d`` keeps working.
    Async on purpose: FastAPI runs a sync dependency on a thread, a hop per request.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMediaType("content-type", f"{ctype!r} is not accepted here: send application/json")
