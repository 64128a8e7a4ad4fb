"""``{"instances": [[...], ...], "work_ms": 0}`` parsed as it arrives, in steps of one received block.

JSON parsers hold the GIL, so parsing a large body on a thread still stalls the event loop; here no step
costs more than its block (tens of kilobytes, about a millisecond). The object's few fields are read with
the standard library; the ``instances`` array is cut after its last complete row in each block (a bracket
count, vectorised, exact because a valid array of numbers holds no strings) and those rows go through orjson
and numpy into the row sink. Anything unusual (a string, NaN, a huge integer, a nested list) leaves the fast
path and is named exactly: the same fields and rules as the rest of the API (``instances.3.7``).
"""

from __future__ import annotations

import json
import re
from enum import Enum, auto

import numpy as np
import orjson

from api.inputs import FEATURE_ABS_MAX, OUT_OF_RANGE
from api.intake.rows import FIELD, RowSink, check_finite, width_error
from inferpool.errors import InputError, MalformedBody

_WS = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DECODER = json.JSONDecoder()
OPEN, CLOSE, QUOTE, COMMA = b"[", b"]", b'"', b","
_OPEN, _CLOSE, _COMMA = OPEN[0], CLOSE[0], COMMA[0]
# A field name or a scalar value, and any array item that is not a row, is read whole up to this size.
SMALL_VALUE_BYTES = 64 * 1024
# A document that is not an object is read this far to tell malformed (400) from merely wrong (422).
NOT_OBJECT_MAX_BYTES = 1024 * 1024
BOM = b"\xef\xbb\xbf"
_NUMBER_GOES_ON = "0123456789.eE+-"
# Consumed bytes are dropped from the buffer once this many have piled up at its front.
COMPACT_BYTES = 256 * 1024


class _At(Enum):
    START = auto()
    KEY = auto()
    COLON = auto()
    VALUE = auto()
    AFTER_VALUE = auto()
    ROWS = auto()
    DONE = auto()
    NOT_OBJECT = auto()


class _Expect(Enum):
    FIRST_ROW = auto()
    ROW = auto()
    SEPARATOR = auto()


class _NeedMore(Exception):
    """Internal: the value at hand continues in a block not received yet."""


def malformed(detail: str) -> MalformedBody:
    return MalformedBody("body", f"not valid JSON ({detail})")


def _row_error(row: int, n_features: int) -> InputError:
    return InputError(f"{FIELD}.{row}", f"every row must be a list of the same length ({n_features})")


def check_items(items: list, row0: int, n_features: int) -> None:
    """The slow path: name the first item or value that is not a row of numbers of the model's width."""
    for k, r in enumerate(items):
        i = row0 + k
        if not isinstance(r, list):
            raise _row_error(i, n_features)
        if len(r) != n_features:
            raise width_error(n_features, len(r)) if i == 0 else _row_error(i, n_features)
        _check_cells(r, i)


def _check_cells(cells: list, i: int) -> None:
    for j, v in enumerate(cells):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputError(f"{FIELD}.{i}.{j}", "must be a number")
        if isinstance(v, int) and abs(v) > FEATURE_ABS_MAX:
            raise InputError(f"{FIELD}.{i}.{j}", OUT_OF_RANGE)


def _load(doc: bytes) -> tuple[object, bool]:
    """(value, exact): orjson first; the standard parser reads NaN, Infinity and integers beyond 64 bits."""
    try:
        return orjson.loads(doc), False
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(doc), True
    except RecursionError:
        raise malformed("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise malformed(str(exc)) from None


class JsonJobParser:
    """Feed it the body block by block, then ``close()``; rows go to the sink, ``work_ms`` is kept."""

    def __init__(self, sink: RowSink, max_row_bytes: int) -> None:
        self.sink = sink
        self.max_row_bytes = max_row_bytes
        self.work_ms = 0
        self._buf = bytearray()
        self._pos = 0
        self._at = _At.START
        self._first_key = True
        self._key = ""
        self._seen: set[str] = set()
        self._final = False
        # The rows scanner: brackets counted from the array's opening on, depth relative to a row's level.
        self._expect = _Expect.FIRST_ROW
        self._scan = self._depth = 0
        self._last_end = self._close = self._quote = -1

    # --- feeding -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data
        self._run()
        if self._pos >= COMPACT_BYTES:
            self._compact()

    def close(self) -> None:
        self._final = True
        self._run()
        if self._at is _At.NOT_OBJECT:
            _load(bytes(self._buf[self._pos :]))  # raises for a malformed document
            raise InputError("body", "must be a JSON object with an 'instances' field")
        if self._at is not _At.DONE:
            raise malformed("the body ends before the object does" if self._buf else "empty body")
        if FIELD not in self._seen:
            raise InputError(FIELD, "field required")

    def _run(self) -> None:
        steps = {
            _At.START: self._start, _At.KEY: self._key_name, _At.COLON: self._colon, _At.VALUE: self._value,
            _At.AFTER_VALUE: self._after_value, _At.ROWS: self._rows, _At.DONE: self._done,
            _At.NOT_OBJECT: self._not_object,
        }  # fmt: skip
        try:
            while steps[self._at]():
                pass
        except _NeedMore:
            pass

    def _compact(self) -> None:
        cut = self._pos
        del self._buf[:cut]
        self._pos = 0
        self._scan = max(0, self._scan - cut)
        self._last_end = self._last_end - cut if self._last_end >= 0 else -1
        self._close = self._close - cut if self._close >= 0 else -1
        self._quote = self._quote - cut if self._quote >= 0 else -1

    # --- helpers -------------------------------------------------------------------------------------
    def _next(self) -> int:
        """Index of the next non-blank byte; _NeedMore when the block ends first."""
        i = _WS.match(self._buf, self._pos).end()
        if i >= len(self._buf):
            self._pos = i
            raise _NeedMore
        return i

    def _small(self, i: int, too_big: InputError) -> tuple[object, int]:
        """(value, end) of the small JSON value at ``i``; ``too_big`` past SMALL_VALUE_BYTES."""
        window = bytes(self._buf[i : i + SMALL_VALUE_BYTES])
        full = len(window) == SMALL_VALUE_BYTES
        try:
            text = window.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":
                raise malformed("not UTF-8") from None
            text = window[: exc.start].decode("utf-8")  # a character cut by the block's end
        try:
            value, n = _DECODER.raw_decode(text)
        except json.JSONDecodeError as exc:
            if full:
                raise too_big from None
            if not self._final:
                raise _NeedMore from None
            raise malformed(exc.msg) from None
        except RecursionError:
            raise malformed("nested too deeply") from None
        number = isinstance(value, int | float)
        if number and not self._final and not full and not text[n:].lstrip(_NUMBER_GOES_ON):
            raise _NeedMore  # "1", "1." or "1e" at the block's end: the number may go on in the next
        return value, i + len(text[:n].encode("utf-8"))

    # --- the object ----------------------------------------------------------------------------------
    def _start(self) -> bool:
        i = self._next()
        head = bytes(self._buf[i : i + 3])
        if head == BOM:  # as json.loads allows
            self._pos = i + 3
            return True
        if BOM.startswith(head) and not self._final:  # the mark's first bytes only, so far
            raise _NeedMore
        self._pos = i
        self._at = _At.KEY if self._buf[i : i + 1] == b"{" else _At.NOT_OBJECT
        self._pos += self._at is _At.KEY
        return True

    def _key_name(self) -> bool:
        i = self._next()
        if self._first_key and self._buf[i : i + 1] == b"}":
            self._pos, self._at = i + 1, _At.DONE
            return True
        if self._buf[i : i + 1] != QUOTE:
            raise malformed("expected a field name")
        m = _STRING.match(self._buf, i)
        if m is None:
            if len(self._buf) - i > SMALL_VALUE_BYTES:
                raise InputError("body", "unknown field (a field name over 64 KiB)")
            if self._final:
                raise malformed("unterminated string")
            raise _NeedMore
        self._key, _ = _load(m.group())
        self._first_key = False
        self._pos, self._at = m.end(), _At.COLON
        return True

    def _colon(self) -> bool:
        i = self._next()
        if self._buf[i : i + 1] != b":":
            raise malformed("expected ':' after a field name")
        self._pos, self._at = i + 1, _At.VALUE
        return True

    def _value(self) -> bool:
        i = self._next()
        key = self._key
        if key not in (FIELD, "work_ms"):
            raise InputError(key, "unknown field")
        if key in self._seen:
            raise InputError(key, "given more than once")
        if key == FIELD:
            if self._buf[i : i + 1] == OPEN:
                self._seen.add(key)
                self._pos, self._at = i + 1, _At.ROWS
                self._scan = self._pos
                return True
            self._small(i, InputError(FIELD, "must be a non-empty list of rows"))  # malformed is a 400
            raise InputError(FIELD, "must be a non-empty list of rows")
        value, end = self._small(i, InputError("work_ms", "must be a non-negative integer"))
        self._seen.add(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError("work_ms", "must be a non-negative integer")
        self.work_ms = value
        self._pos, self._at = end, _At.AFTER_VALUE
        return True

    def _after_value(self) -> bool:
        i = self._next()
        c = self._buf[i : i + 1]
        if c not in (b",", b"}"):
            raise malformed("expected ',' or '}' after a value")
        self._pos, self._at = i + 1, (_At.KEY if c == b"," else _At.DONE)
        return True

    def _done(self) -> bool:
        i = _WS.match(self._buf, self._pos).end()
        if i < len(self._buf):
            raise malformed("data after the object")
        self._pos = i
        return False

    def _not_object(self) -> bool:
        if len(self._buf) - self._pos > NOT_OBJECT_MAX_BYTES:
            raise InputError("body", "must be a JSON object with an 'instances' field")
        return False

    # --- the rows --------------------------------------------------------------------------------------
    def _rows(self) -> bool:
        i = self._next()
        c = self._buf[i : i + 1]
        if self._expect is _Expect.SEPARATOR:
            if c == COMMA:
                self._pos, self._expect = i + 1, _Expect.ROW
                return True
            if c == CLOSE:
                return self._end_rows(i)
            raise malformed(f"expected ',' or ']' after row {self.sink.n_rows - 1}")
        if c == CLOSE:
            if self._expect is _Expect.FIRST_ROW:
                return self._end_rows(i)
            raise malformed("a ',' before the end of 'instances'")
        row = self.sink.n_rows
        if c != OPEN:  # an item that is not a list: read it whole (malformed is a 400)
            self._small(i, _row_error(row, self.sink.n_features))
            raise _row_error(row, self.sink.n_features)
        self._pos = i
        self._scan_more()
        if self._last_end > i:
            self._parse_rows(bytes(self._buf[i : self._last_end]))
            self._pos, self._expect = self._last_end, _Expect.SEPARATOR
            return True
        if self._quote >= 0:
            self._refuse_string_row(i, self._quote, row)
        if self._scan - i > self.max_row_bytes:
            raise InputError(f"{FIELD}.{row}", f"a row may take at most {self.max_row_bytes} bytes of JSON")
        if self._final:
            raise malformed("the body ends inside 'instances'")
        raise _NeedMore

    def _end_rows(self, i: int) -> bool:
        if self.sink.n_rows == 0:
            raise InputError(FIELD, "must be a non-empty list of rows")
        self._pos, self._at = i + 1, _At.AFTER_VALUE
        return True

    def _scan_more(self) -> None:
        """Count brackets in the bytes not scanned yet, up to the array's end or the first string."""
        if self._close >= 0 or self._quote >= 0:
            return
        start = self._scan
        new = bytes(self._buf[start:])
        q = new.find(QUOTE)
        a = np.frombuffer(new, dtype=np.uint8, count=q if q >= 0 else len(new))
        depth = np.cumsum((a == _OPEN).astype(np.int32) - (a == _CLOSE)) + self._depth
        below = np.flatnonzero(depth < 0)
        if below.size:  # the array's own ']'; a string after it is the object's business
            k = int(below[0])
            self._close, a, depth = start + k, a[:k], depth[:k]
        elif q >= 0:
            self._quote = start + q
        ends = np.flatnonzero((depth == 0) & (a == _CLOSE))
        if ends.size:
            self._last_end = start + int(ends[-1]) + 1
        if depth.size:
            self._depth = int(depth[-1])
        self._scan = start + a.size

    def _parse_rows(self, seg: bytes) -> None:
        items, exact = _load(b"[" + seg + b"]")
        n, row0 = self.sink.n_features, self.sink.n_rows
        try:
            X = np.array(items)
        except (ValueError, TypeError, OverflowError):  # ragged rows
            X = None
        # true/false among numbers become 1.0/0.0 in a float array: only a scan tells them apart.
        odd = exact or b"true" in seg or b"false" in seg
        if X is None or X.ndim != 2 or X.shape[1] != n or X.dtype.kind not in "iuf" or odd:
            check_items(items, row0, n)
            if X is None or X.dtype.kind not in "iuf":
                X = np.asarray(items, dtype=np.float64)  # integers beyond 64 bits: numbers, but objects
        self.sink.add(X)

    def _refuse_string_row(self, i: int, q: int, row: int) -> None:
        """A string inside row ``row`` (which starts at ``i``): name its cell, or an earlier bad one."""
        a = np.frombuffer(bytes(self._buf[i:q]), dtype=np.uint8)
        depth = np.cumsum((a == _OPEN).astype(np.int32) - (a == _CLOSE))
        commas = np.flatnonzero((a == _COMMA) & (depth == 1))
        if commas.size:  # the cells before it, which come first
            cells, _ = _load(bytes(self._buf[i : i + int(commas[-1])]) + CLOSE)
            _check_cells(cells, row)
            check_finite(np.asarray([cells], dtype=np.float64), row)
        raise InputError(f"{FIELD}.{row}.{commas.size}", "must be a number")
