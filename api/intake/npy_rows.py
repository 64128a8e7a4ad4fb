"""``.npy`` job bodies parsed as they arrive: the header is checked at once, then whole rows go to the sink.

The header alone decides dtype (numeric, never objects: no pickle), shape (2-D, the model's width, at most
the row limit) and size (no larger than the body declares), so a wrong array is refused before its data
is read. C-ordered data goes to the sink row block by row block; Fortran-ordered data arrives column by
column, so it is kept in its own dtype (no bigger than the body) until the last column is in.
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib import format as npy_format

from api.intake.rows import FIELD, RowSink, width_error
from inferpool.errors import InputError, MalformedBody

PRELUDE_BYTES = {1: 10, 2: 12}  # magic (6), version (2), header length (2 or 4)
MAX_HEADER_BYTES = 64 * 1024
ZIP_MAGIC = b"PK\x03\x04"


def unreadable(detail: str) -> MalformedBody:
    return MalformedBody("body", f"not a readable .npy array of numbers ({detail})")


class NpyParser:
    """Feed it the body block by block, then ``close()``; rows go to the sink."""

    def __init__(self, sink: RowSink, declared_bytes: int | None = None) -> None:
        self.sink = sink
        self.declared_bytes = declared_bytes  # the request's Content-Length, an upper bound of the array
        self._buf = bytearray()
        self._dtype: np.dtype | None = None
        self._rows = self._row_bytes = 0
        self._left = 0  # data bytes still to come
        self._fortran: np.ndarray | None = None  # (columns, rows) in the body's dtype
        self._filled = 0

    def feed(self, data: bytes) -> None:
        if self._dtype is None:
            self._buf += data
            self._header()
            if self._dtype is None:
                return
            data, self._buf = bytes(self._buf), bytearray()
        self._data(data)

    def close(self) -> None:
        if self._dtype is None:
            if self._buf.startswith(ZIP_MAGIC):
                raise MalformedBody("body", "expected one .npy array, not an .npz archive")
            raise unreadable("the body ends inside the header")
        if self._left:
            raise unreadable(f"the body ends {self._left} bytes before the array does")
        if self._fortran is not None:
            X = self._fortran.T
            for k in range(0, self._rows, self.sink.chunk_rows):
                self.sink.add(X[k : k + self.sink.chunk_rows])

    def _header(self) -> None:
        buf = self._buf
        if buf.startswith(ZIP_MAGIC):
            raise MalformedBody("body", "expected one .npy array, not an .npz archive")
        if len(buf) < 8:
            return
        try:
            major, _ = npy_format.read_magic(io.BytesIO(bytes(buf[:8])))
        except ValueError as exc:
            raise unreadable(str(exc)) from None
        if major not in PRELUDE_BYTES:
            raise unreadable(f"format version {major} is not read here: save with numpy's default")
        prelude = PRELUDE_BYTES[major]
        if len(buf) < prelude:
            return
        header_len = int.from_bytes(buf[8:prelude], "little")
        if header_len > MAX_HEADER_BYTES:
            raise unreadable(f"a header of {header_len} bytes")
        if len(buf) < prelude + header_len:
            return
        fp = io.BytesIO(bytes(buf[: prelude + header_len]))
        npy_format.read_magic(fp)
        read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        try:
            shape, fortran, dtype = read(fp, max_header_size=MAX_HEADER_BYTES)
        except (ValueError, SyntaxError, TypeError, KeyError) as exc:
            raise unreadable(str(exc)) from None
        self._check(shape, dtype, prelude + header_len)
        del self._buf[: prelude + header_len]
        self._dtype, self._rows = dtype, shape[0]
        self._row_bytes = shape[1] * dtype.itemsize
        self._left = self._rows * self._row_bytes
        if fortran:
            self._fortran = np.empty((shape[1], shape[0]), dtype=dtype)

    def _check(self, shape: tuple[int, ...], dtype: np.dtype, header_bytes: int) -> None:
        if dtype.hasobject:
            raise unreadable("an object array, which only pickle reads, and pickle is refused")
        if dtype.kind not in "iuf":
            raise InputError("body", f".npy array must be numeric, got dtype {dtype}")
        if len(shape) != 2 or shape[0] == 0:
            raise InputError(FIELD, "must be a non-empty list of rows")
        data_bytes = math.prod(shape) * dtype.itemsize
        if self.declared_bytes is not None and data_bytes > self.declared_bytes - header_bytes:
            raise MalformedBody("body", ".npy header declares an array larger than the body")
        if shape[1] != self.sink.n_features:
            raise width_error(self.sink.n_features, shape[1])
        self.sink.expect_rows(shape[0])

    def _data(self, data: bytes) -> None:
        if len(data) > self._left:
            raise MalformedBody("body", "data after the end of the .npy array")
        self._left -= len(data)
        if self._fortran is not None:
            flat = self._fortran.reshape(-1).view(np.uint8)
            flat[self._filled : self._filled + len(data)] = np.frombuffer(data, dtype=np.uint8)
            self._filled += len(data)
            return
        self._buf += data
        whole = len(self._buf) // self._row_bytes * self._row_bytes
        if whole:
            X = np.frombuffer(bytes(self._buf[:whole]), dtype=self._dtype).reshape(-1, self.sink.n_features)
            del self._buf[:whole]
            self.sink.add(X)
