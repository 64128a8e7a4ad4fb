"""Where parsed rows go: checked as they arrive, copied into float32 chunks of the job's chunk size.

The parsers (``json_rows``, ``csv_rows``, ``npy_rows``) hand over blocks of rows in body order; a full chunk
is taken away at once (``take``) and stored in Redis by the caller, so the API holds one chunk and one
block at a time, whatever the size of the body.
"""

from __future__ import annotations

import numpy as np

from api import inputs
from inferpool import codec
from inferpool.errors import InputError

FIELD = "instances"


def width_error(n_features: int, width: int) -> InputError:
    """The first row decides: a body whose rows are not the model's width is refused on its first row."""
    return InputError(FIELD, f"each row must have {n_features} features, got {width}")


def _shifted(exc: InputError, offset: int) -> InputError:
    """The same error naming its cell by row in the whole body, not in the block that was checked."""
    head, _, rest = exc.field.partition(".")
    row, _, col = rest.partition(".")
    if head != FIELD or not row.isdigit() or not offset:
        return exc
    exc.field = f"{FIELD}.{int(row) + offset}.{col}" if col else f"{FIELD}.{int(row) + offset}"
    exc.args = (f"{exc.field}: {exc.message}",)
    cells = getattr(exc, "cells", None)  # cells of the drift signal, when the checker records them
    if cells is not None:
        exc.cells = [(i + offset, j) for i, j in cells]
    return exc


def check_finite(X: np.ndarray, row0: int) -> None:
    """Every value finite and within float32; the error names the cell by its row in the whole body."""
    try:
        inputs.check_values(X, FIELD)
    except InputError as exc:
        raise _shifted(exc, row0) from None


class RowSink:
    """Rows checked (width, count, finite and within float32) and cut into float32 chunks."""

    def __init__(self, n_features: int, max_rows: int, chunk_rows: int) -> None:
        self.n_features = n_features
        self.max_rows = max_rows
        self.chunk_rows = chunk_rows
        self.n_rows = 0
        self.n_chunks = 0
        self._chunk = np.empty((chunk_rows, n_features), dtype=codec.ROW_DTYPE)
        self._fill = 0
        self._ready: list[np.ndarray] = []

    def expect_rows(self, n: int) -> None:
        """A body that declares its row count (.npy) is refused for it before any row is read."""
        if n > self.max_rows:
            raise InputError(FIELD, f"at most {self.max_rows} rows per request, got {n}")

    def add(self, X: np.ndarray) -> None:
        """Rows ``n_rows .. n_rows + len(X)`` of the body, any real dtype."""
        if X.shape[1] != self.n_features:
            raise width_error(self.n_features, X.shape[1])
        total = self.n_rows + X.shape[0]
        if total > self.max_rows:
            raise InputError(FIELD, f"at most {self.max_rows} rows per request, got at least {total}")
        if X.dtype.kind == "f" and X.dtype.itemsize < 4:
            X = X.astype(np.float32)  # float16: compared with float32's limit, it would overflow
        if X.dtype.kind == "f":  # integers are always finite and within float32
            check_finite(X, self.n_rows)
        done = 0
        while done < X.shape[0]:
            take = min(self.chunk_rows - self._fill, X.shape[0] - done)
            self._chunk[self._fill : self._fill + take] = X[done : done + take]
            self._fill += take
            done += take
            if self._fill == self.chunk_rows:
                self._emit()
        self.n_rows = total

    def _emit(self) -> None:
        self._ready.append(self._chunk[: self._fill])
        self.n_chunks += 1
        self._chunk = np.empty((self.chunk_rows, self.n_features), dtype=codec.ROW_DTYPE)
        self._fill = 0

    def take(self) -> list[np.ndarray]:
        """Full chunks not yet stored, in order."""
        out, self._ready = self._ready, []
        return out

    def finish(self) -> list[np.ndarray]:
        """The last chunks, the partial one included; refuses a body without rows."""
        if self.n_rows == 0:
            raise InputError(FIELD, "must be a non-empty list of rows")
        if self._fill:
            self._emit()
        return self.take()
