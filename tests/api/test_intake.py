"""The streaming body parsers (api/intake), alone: the same rows and the same errors whatever the blocks.

A body arrives in blocks of any size, cut anywhere (inside a number, a string, a UTF-8 character, a
.npy header); parsing it block by block must give what parsing it whole gives. The live API is tested in
tests/api/test_input_errors.py and tests/api/test_hardening_api.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from api.intake.csv_rows import CsvParser
from api.intake.json_rows import JsonJobParser
from api.intake.npy_rows import NpyParser
from api.intake.rows import RowSink
from inferpool.errors import InputError

N = 3
BLOCKS = (1, 2, 3, 7, 64, 10**9)  # 10**9: the whole body at once
X = np.array([[1, 2, 3], [4.5, -6, 7e10], [0, 0, 0], [1e-300, 1, 1], [2, 2, 2]])


def parse(kind: str, body: bytes, block: int, max_rows: int = 100) -> tuple[np.ndarray, int | None]:
    """(rows as float32, JSON work_ms) or the InputError raised."""
    sink = RowSink(N, max_rows, chunk_rows=2)  # chunks of 2 rows: several chunks per body
    parser = {
        "json": lambda: JsonJobParser(sink, 4096),
        "csv": lambda: CsvParser(sink, 4096),
        "npy": lambda: NpyParser(sink, None),  # a multipart part: no length known ahead
    }[kind]()
    chunks = []
    for i in range(0, len(body), block):
        parser.feed(body[i : i + block])
        chunks += sink.take()
    parser.close()
    chunks += sink.finish()
    assert all(len(c) <= 2 for c in chunks)
    return np.concatenate(chunks), getattr(parser, "work_ms", None)


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


VALID = {
    "json": [
        json.dumps({"instances": X.tolist(), "work_ms": 5}).encode(),
        json.dumps({"work_ms": 5, "instances": X.tolist()}, indent=2).encode(),
        b"\xef\xbb\xbf" + json.dumps({"instances": X.tolist(), "work_ms": 5}).encode(),
        json.dumps({"instances": X.tolist(), "work_ms": 5}).replace(", ", ",\r\n\t ").encode(),
    ],
    "csv": [
        b"f0,f1,f2\n" + "\n".join(",".join(repr(v) for v in r) for r in X.tolist()).encode(),
        "\r\n".join(",".join(f'"{v!r}"' for v in r) for r in X.tolist()).encode() + b"\r\n\r\n",
    ],
    "npy": [npy(X), npy(X.astype(">f8")), npy(X.astype(np.float32)), npy(np.asfortranarray(X))],
}


@pytest.mark.parametrize("kind", list(VALID))
def test_rows_are_the_same_whatever_the_blocks(kind):
    for body in VALID[kind]:
        for block in BLOCKS:
            rows, work_ms = parse(kind, body, block)
            assert rows.dtype == np.float32 and rows.tolist() == X.astype(np.float32).tolist(), (body[:40], block)
            assert work_ms == (5 if kind == "json" else None)


@pytest.mark.parametrize("dtype", ["i1", "u1", "<i2", ">u2", "i4", "i8", "u8", "f2", "<f4", ">f8"])
def test_npy_of_every_numeric_dtype_in_either_order(dtype):
    a = (np.arange(30).reshape(10, N) % 50).astype(dtype)
    for order in (a, np.asfortranarray(a)):
        for block in (5, 10**9):
            assert parse("npy", npy(order), block)[0].tolist() == a.astype(np.float32).tolist()


# (kind, body, field, words in the message); each must come out the same for every block size.
ERRORS = [
    ("json", b'{"instances": [[1,2,3],[1,"x]",3]]}', "instances.1.1", "number"),
    ("json", b'{"instances": [[1,2,3],[1,2,NaN]]}', "instances.1.2", "finite"),
    ("json", b'{"instances": [[1,2,3],[1,2,3],[1,2]]}', "instances.2", "same length"),
    ("json", b'{"instances": [[1,2]]}', "instances", "3 features, got 2"),
    ("json", b'{"instances": [1,2,3]}', "instances.0", None),
    ("json", b'{"instances": [[1,2,3],{"a]": 1}]}', "instances.1", None),
    ("json", b'{"instances": [[1,2,3],[NaN,{"a": 1},3]]}', "instances.1.0", "finite"),
    ("json", b'{"instances": [[1,true,3]]}', "instances.0.1", "number"),
    ("json", b'{"instances": [[1,[2],3]]}', "instances.0.1", "number"),
    ("json", b'{"instances": [[1,2,1' + b"0" * 400 + b"]]}", "instances.0.2", "float32"),
    ("json", b'{"instances": [[1,2,3]], "work_ms": 1.5}', "work_ms", "integer"),
    ("json", b'{"instances": [[1,2,3]], "instances": [[1,2,3]]}', "instances", "more than once"),
    ("json", b'{"instances": [[1,2,3]], "extra": 1}', "extra", "unknown"),
    ("json", b'{"work_ms": 0}', "instances", "required"),
    ("json", b'{"instances": [[1,2,3]]', "body", "not valid JSON"),
    ("json", b'{"instances": [[1,2,3]]} []', "body", "not valid JSON"),
    ("json", b'{"instances": [[1,2,3],[1,2,' + b" " * 5000, "instances.1", "bytes of JSON"),  # a row that never ends
    ("json", b"[" * 3000 + b"]" * 3000, "body", "not valid JSON"),
    ("json", b'{"instances": "\xff"}', "body", "UTF-8"),
    ("json", b'[{"instances": [[1,2,3]]}]', "body", "JSON object"),
    ("json", b'{"instances": [' + b"[1,2,3]," * 100 + b"[1,2,3]]}", "instances", "at most 100 rows"),
    ("csv", b"1,2,3\n1,x,3\n", "row 2, column 2", "not a number"),
    ("csv", b'1,2,3\n"1,\n2",2,3\n', "row 2, column 1", "not a number"),
    ("csv", b"1,2,3\n1,2\n", "row 2", "columns"),
    ("csv", b"1,2\n1,2\n", "instances", "3 features, got 2"),
    ("csv", b"1,2,3\n1,2,inf\n", "instances.1.2", "finite"),
    ("csv", b"a,b,c\n\n", "body", "no rows"),
    ("csv", b"1,2,3\n\xff,2,3\n", "body", "UTF-8"),
    ("npy", npy(np.zeros((2, 4))), "instances", "3 features, got 4"),
    ("npy", npy(np.zeros(3)), "instances", "rows"),
    ("npy", npy(np.zeros((101, N))), "instances", "at most 100 rows"),
    ("npy", npy(np.array([[1, 2, 3], [1, np.nan, 3]])), "instances.1.1", "finite"),
    ("npy", npy(np.array([["a", "b", "c"]])), "body", "numeric"),
    ("npy", npy(np.zeros((2, N), dtype=bool)), "body", "numeric"),
    ("npy", npy(np.zeros((2, N)))[:-1], "body", "ends"),
    ("npy", npy(np.zeros((2, N))) + b"x", "body", "after the end"),
    ("npy", b"PK\x03\x04 an npz", "body", "npz"),
    ("npy", b"\x93NUMPY garbage", "body", "readable"),
]


@pytest.mark.parametrize(("kind", "body", "field", "says"), ERRORS)
def test_errors_name_the_same_field_whatever_the_blocks(kind, body, field, says):
    found = set()
    for block in BLOCKS:
        with pytest.raises(InputError) as err:
            parse(kind, body, block)
        found.add((err.value.field, err.value.message))
    assert len(found) == 1, found
    ((got_field, message),) = found
    assert got_field == field and (says is None or says in message), (got_field, message)
