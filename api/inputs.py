"""The rules every route applies to rows (finite, within float32), with errors that name the field and the
cell, and the refusals they cause recorded for drift. Job bodies are parsed as they arrive in ``api.intake``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import numpy as np
from starlette.requests import Request

from inferpool import drift
from inferpool.errors import InputError, UnsupportedMediaType

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


async def require_json(request: Request) -> None:
    """Dependency of the JSON-body routes: another content type is a 415, as on ``/v1/jobs``.

    No content type at all is read as JSON (FastAPI does the same), so ``curl -d`` keeps working.
    Async on purpose: FastAPI runs a sync dependency on a thread, a hop per request.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMediaType("content-type", f"{ctype!r} is not accepted here: send application/json")
