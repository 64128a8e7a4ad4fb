"""CSV job bodies parsed as they arrive: each block's complete lines, at once, into the row sink.

A block is cut after its last line end outside quotes; those lines go through ``csv`` and one numpy
conversion, and a block that fails is scanned to name the first bad cell (``row 4, column 8``, 1-based as
a spreadsheet shows them). A first line with no number in it is a header.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from api.intake.rows import RowSink, width_error
from inferpool.errors import InputError, MalformedBody

_NL, _QUOTE = ord("\n"), ord('"')


def is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


class CsvParser:
    """Feed it the body block by block, then ``close()``; rows go to the sink."""

    def __init__(self, sink: RowSink, max_line_bytes: int) -> None:
        self.sink = sink
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._header_checked = False

    def feed(self, data: bytes) -> None:
        self._buf += data
        cut = self._cut()
        if cut:
            block = bytes(self._buf[:cut])
            del self._buf[:cut]
            self._lines(block)
        if len(self._buf) > self.max_line_bytes:
            raise InputError(f"row {self.sink.n_rows + 1}", f"a line may take at most {self.max_line_bytes} bytes")

    def close(self) -> None:
        if self._buf:
            self._lines(bytes(self._buf))
            self._buf.clear()
        if self.sink.n_rows == 0:
            raise InputError("body", "CSV holds no rows")

    def _cut(self) -> int:
        """Just past the last line end that is not inside a quoted field (0 if none yet)."""
        last = self._buf.rfind(b"\n")
        if last < 0:
            return 0
        if self._buf.find(b'"', 0, last) < 0:
            return last + 1
        a = np.frombuffer(bytes(self._buf[: last + 1]), dtype=np.uint8)
        inside = np.cumsum(a == _QUOTE) % 2  # "" inside a quoted field flips twice: still inside
        ends = np.flatnonzero((a == _NL) & (inside == 0))
        return int(ends[-1]) + 1 if ends.size else 0

    def _lines(self, block: bytes) -> None:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedBody("body", "CSV must be UTF-8 text") from exc
        try:
            rows = [r for r in csv.reader(io.StringIO(text)) if r]
        except csv.Error as exc:
            raise MalformedBody("body", f"not readable as CSV ({exc})") from exc
        if not self._header_checked and rows:
            self._header_checked = True
            # A header is a first line with no number in it; a data line with a typo is an error, not a header.
            if not any(is_number(v) for v in rows[0]):
                rows = rows[1:]
        if rows:
            self.sink.add(self._as_array(rows))

    def _as_array(self, rows: list[list[str]]) -> np.ndarray:
        n = self.sink.n_features
        try:
            X = np.array(rows, dtype=np.float64)
        except ValueError:
            X = None
        if X is None or X.ndim != 2 or X.shape[1] != n:
            self._first_bad(rows)
            X = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)  # numbers numpy did not read
        return X

    def _first_bad(self, rows: list[list[str]]) -> None:
        n, row0 = self.sink.n_features, self.sink.n_rows
        for k, r in enumerate(rows):
            i = row0 + k
            if len(r) != n:
                if i == 0:
                    raise width_error(n, len(r))
                raise InputError(f"row {i + 1}", f"has {len(r)} columns, expected {n}")
            for j, v in enumerate(r):
                if not is_number(v):
                    raise InputError(f"row {i + 1}, column {j + 1}", f"{v[:40]!r} is not a number")
