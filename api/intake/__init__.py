"""Job bodies read as they arrive: JSON, CSV or .npy, raw or as a multipart ``file``, into float32 chunks.

Nothing holds a whole body: each received block is parsed at once (``json_rows``, ``csv_rows``,
``npy_rows``), its rows checked and copied into the current chunk (``rows.RowSink``), and every full chunk
handed to the caller to store (two stores at a time, while the next blocks are parsed), so the API's
memory stays at about three chunks and one block whatever the body's size, and no step holds the event
loop longer than one block takes (about a millisecond). The first bad row or cell stops the reading with
an error that names it.

The body's digest (of its format, the ``work_ms`` query and the payload, not the multipart envelope, whose
boundary changes with every send) identifies a request for ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.intake.csv_rows import CsvParser
from api.intake.json_rows import JsonJobParser
from api.intake.npy_rows import NpyParser
from api.intake.rows import RowSink
from inferpool.errors import InputError, MalformedBody, UnsupportedMediaType

JSON, CSV, NPY, MULTIPART = "json", "csv", "npy", "multipart"
BODY_FORMATS = {
    "application/json": JSON, "": JSON, "text/csv": CSV, "application/csv": CSV,
    "application/x-npy": NPY, "application/octet-stream": NPY, "multipart/form-data": MULTIPART,
}  # fmt: skip
FILE_EXTENSIONS = {"csv": CSV, "npy": NPY, "json": JSON}
# A received block is parsed in pieces of at most this, with the event loop served in between.
STEP_BYTES = 64 * 1024
# Chunks a job's body may have on their way to Redis while the next blocks are parsed (each ~0.3 MB at the
# default 4,096 rows of 20 features).
STORES_IN_FLIGHT = 2
# A JSON row or CSV line longer than this is refused (a row of the model's width takes far less).
ROW_BYTES_PER_FEATURE = 256
ROW_BYTES_MIN = 64 * 1024

Store = Callable[[int, np.ndarray], Awaitable[None]]


class RowParser(Protocol):
    def feed(self, data: bytes) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Plan:
    """How a request's body will be read, decided from its headers before any of it is."""

    fmt: str
    boundary: bytes | None
    declared_bytes: int | None
    query_work_ms: int | None


def plan_for(request: Request, query_work_ms: int | None) -> Plan:
    """415 for a content type the route does not read, 400 for a multipart body without a boundary."""
    raw = request.headers.get("content-type", "")
    ctype = raw.split(";")[0].strip().lower()
    fmt = BODY_FORMATS.get(ctype)
    if fmt is None:
        raise UnsupportedMediaType("content-type", f"{ctype!r} is not accepted here: send JSON, CSV or .npy")
    boundary = None
    if fmt == MULTIPART:
        _, options = parse_options_header(raw)
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedBody("body", "a multipart body needs a boundary in its content type")
    length = request.headers.get("content-length", "")
    return Plan(fmt, boundary, int(length) if length.isdigit() else None, query_work_ms)


def new_digest(fmt: str, query_work_ms: int | None) -> hashlib._Hash:
    """The digest of a request's job: its payload's format, the ``work_ms`` query, then the payload."""
    return hashlib.sha256(f"{fmt}\0{query_work_ms}\0".encode())


@dataclass
class Received:
    fmt: str  # of the payload: json, csv or npy
    digest: str
    n_rows: int = 0
    n_chunks: int = 0
    work_ms: int | None = None  # from a JSON body's own field


@dataclass
class _Payload:
    """The bytes that are the job: hashed always, parsed into the sink when there is one."""

    plan: Plan
    sink: RowSink | None
    fmt: str = ""
    parser: RowParser | None = None
    digest: hashlib._Hash | None = None

    def open(self, fmt: str) -> None:
        self.fmt = fmt
        self.digest = new_digest(fmt, self.plan.query_work_ms)
        if self.sink is None:
            return
        max_row = max(ROW_BYTES_MIN, ROW_BYTES_PER_FEATURE * self.sink.n_features)
        self.parser = {
            JSON: lambda: JsonJobParser(self.sink, max_row),
            CSV: lambda: CsvParser(self.sink, max_row),
            NPY: lambda: NpyParser(self.sink, self.plan.declared_bytes),
        }[fmt]()

    def feed(self, data: bytes) -> None:
        self.digest.update(data)  # type: ignore[union-attr]  # open() comes first
        if self.parser is not None:
            self.parser.feed(data)

    def close(self) -> None:
        if self.parser is not None:
            self.parser.close()


class _FilePart:
    """python-multipart callbacks: the first part named ``file`` is the payload; every other part is skipped."""

    def __init__(self, payload: _Payload) -> None:
        self.payload = payload
        self.found = self._inside = False
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._val,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end,
        }  # fmt: skip

    def _begin(self) -> None:
        self._headers, self._inside = {}, False

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _val(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"file" or self.found:
            return
        self.found = self._inside = True
        name = options.get(b"filename", b"").decode("utf-8", "replace").lower()
        ctype = self._headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        fmt = FILE_EXTENSIONS.get(name.rsplit(".", 1)[-1]) if "." in name else None
        fmt = fmt or BODY_FORMATS.get(ctype)
        if fmt is None or fmt == MULTIPART:
            raise UnsupportedMediaType("content-type", f"{ctype!r} is not accepted here: send JSON, CSV or .npy")
        self.payload.open(fmt)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._inside:
            self.payload.feed(data[start:end])

    def _end(self) -> None:
        self._inside = False


async def receive(request: Request, plan: Plan, sink: RowSink | None, store: Store | None) -> Received:
    """Read the body to its end: rows into ``sink`` and each full chunk to ``store`` (index, rows).

    Without a sink the body is only hashed (an idempotent retry of a job already accepted).
    """
    payload = _Payload(plan, sink)
    stored = 0
    # Stores still running: the next blocks are parsed while Redis takes a chunk, and at most
    # STORES_IN_FLIGHT chunks are held beyond the one being filled.
    writing: deque[asyncio.Task[None]] = deque()

    async def flush(chunks: list[np.ndarray]) -> None:
        nonlocal stored
        for rows in chunks:
            if store is not None:
                if len(writing) >= STORES_IN_FLIGHT:
                    await writing.popleft()
                writing.append(asyncio.ensure_future(store(stored, rows)))
            stored += 1

    if plan.fmt == MULTIPART:
        part = _FilePart(payload)
        multipart = MultipartParser(plan.boundary, part.callbacks())
        write: Callable[[bytes], object] = multipart.write
    else:
        payload.open(plan.fmt)
        write = payload.feed
    try:
        async for block in request.stream():
            for i in range(0, len(block), STEP_BYTES):
                write(block[i : i + STEP_BYTES])
                if sink is not None:
                    await flush(sink.take())
                if len(block) > STEP_BYTES:
                    await asyncio.sleep(0)
        if plan.fmt == MULTIPART:
            multipart.finalize()
            if not part.found:
                raise InputError("file", "multipart upload needs a 'file' part (.csv, .npy or .json)")
        payload.close()
        if sink is not None:
            await flush(sink.finish())
        while writing:
            await writing.popleft()
    except FormParserError as exc:
        raise MalformedBody("body", f"not a readable multipart body ({exc})") from None
    finally:
        # On an error, no store may land after the caller has discarded what was staged.
        if writing:
            await asyncio.gather(*writing, return_exceptions=True)
    work_ms = payload.parser.work_ms if isinstance(payload.parser, JsonJobParser) else None
    digest = payload.digest.hexdigest()  # type: ignore[union-attr]  # opened: a payload was found
    return Received(payload.fmt, digest, sink.n_rows if sink else 0, stored, work_ms)
