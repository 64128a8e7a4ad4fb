"""A small keep-alive HTTP/1.1 client on asyncio, for the load generator and the benchmarks.

Why not httpx: its ``AsyncClient`` costs ~5.7 ms of CPU per request at 90 req/s, and the load
generator shares 2 cores with the system it measures. This client costs a small fraction of that:
one :class:`asyncio.Protocol` per connection (no streams, no per-request task or context manager),
one request at a time on a connection, a LIFO pool of idle connections, request bytes built by the
caller once (:meth:`HttpClient.prepare`) and a deadline as one loop timer per request.

It reads a status line, headers and a body framed by Content-Length, chunked transfer coding or the
connection's close; it skips 1xx answers. No redirects, cookies, proxies, compression, pipelining or
HTTP/2. ``https://`` URLs work (the default SSL context).

A status code is an answer, never an exception. Failures raise:

* ``TimeoutError``: the deadline passed (connecting included);
* ``OSError``: connecting failed or the connection broke (``ConnectionRefusedError``,
  ``ConnectionResetError``, ...);
* :class:`ProtocolError`: the peer did not answer HTTP/1.x that this client can read.

:data:`TRANSPORT_ERRORS` is the tuple of the last two.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import orjson

logger = logging.getLogger(__name__)

JSON = "application/json"
# uvicorn closes a connection idle for 5 s (gunicorn 2 s): reusing one about to be closed races the
# server's FIN, and a lost POST cannot be retried safely. Idle longer than this, open a new one.
DEFAULT_IDLE_TIMEOUT_S = 4.0
DEFAULT_MAX_IDLE = 512
MAX_HEAD_BYTES = 64 * 1024
_IDEMPOTENT = (b"GET ", b"HEAD ", b"OPTIONS ")
_NO_BODY_STATUSES = (204, 304)


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x this client can read."""


class _ClosedEarly(ConnectionResetError):
    """The connection closed before any byte of the answer arrived (a reused one may simply have expired)."""


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, ProtocolError)


class Response(NamedTuple):
    """An answer: unpacks as ``status, body = await client.get(...)``."""

    status: int
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


class _Connection(asyncio.Protocol):
    """One connection and the parse state of the answer in flight on it (at most one)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._buf = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._buf.clear()
        self._body_start = -1  # index of the body in _buf, once the head is parsed
        self._status = 0
        self._length = -1  # -1: not framed by Content-Length
        self._chunked = False
        self._chunks: list[bytes] = []
        self._chunk_pos = 0
        self._head_request = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the stream is out of step
            self.reusable = False
            self.abort()
            return
        self._buf += data
        try:
            response = self._parse()
        except (ProtocolError, ValueError, IndexError) as e:
            self._fail(e if isinstance(e, ProtocolError) else ProtocolError(f"unreadable answer: {e}"))
            return
        if response is not None:
            self.waiter = None
            self._reset()
            waiter.set_result(response)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles an answer read until close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None and self._body_start >= 0 and self._length < 0 and not self._chunked:
            waiter.set_result(Response(self._status, bytes(self._buf[self._body_start :])))
        elif not self._buf:
            waiter.set_exception(_ClosedEarly("connection closed before the answer"))
        else:
            waiter.set_exception(ConnectionResetError(f"connection closed in the middle of the answer ({exc})"))

    # --- requests ----------------------------------------------------------------------------------------

    def start(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        assert self.transport is not None
        if self.closed:  # the peer closed it between connecting and now
            waiter.set_exception(_ClosedEarly("connection closed before the request"))
            return
        self.waiter = waiter
        self._head_request = data.startswith(b"HEAD ")
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection now (an answer cut short leaves it mid-stream: never reuse it)."""
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # --- parsing -----------------------------------------------------------------------------------------

    def _parse(self) -> Response | None:
        buf = self._buf
        while self._body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("answer head over 64 KiB")
                return None
            self._read_head(bytes(buf[:end]))
            if 100 <= self._status < 200:  # 100 Continue and friends: the real answer follows
                del buf[: end + 4]
                continue
            self._body_start = self._chunk_pos = end + 4
        if self._length >= 0:
            stop = self._body_start + self._length
            if len(buf) < stop:
                return None
            if len(buf) > stop:  # more than one answer to one request: the stream is out of step
                self.reusable = False
            return Response(self._status, bytes(buf[self._body_start : stop]))
        if self._chunked:
            return self._parse_chunks()
        return None  # read until the peer closes; connection_lost completes it

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
        self._status = int(status_line[9:12])
        keep_alive = status_line[5:8] == b"1.1"  # HTTP/1.0 closes unless it says keep-alive
        length, chunked = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
                if length < 0:
                    raise ProtocolError("negative Content-Length")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    keep_alive = False
                elif token == b"keep-alive":
                    keep_alive = True
        if chunked:
            length = -1  # chunked wins over Content-Length (RFC 9112 6.3)
        elif self._head_request or self._status in _NO_BODY_STATUSES or self._status < 200:
            length = 0
        elif length < 0:
            keep_alive = False  # body runs until the peer closes
        self._length, self._chunked = length, chunked
        if not keep_alive:
            self.reusable = False

    def _parse_chunks(self) -> Response | None:
        buf, pos = self._buf, self._chunk_pos
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            if size < 0:
                raise ProtocolError("negative chunk size")
            if size == 0:
                end = buf.find(b"\r\n\r\n", line_end)  # after optional trailer lines
                if end < 0:
                    return None
                if len(buf) > end + 4:
                    self.reusable = False
                return Response(self._status, b"".join(self._chunks))
            start = line_end + 2
            stop = start + size
            if len(buf) < stop + 2:
                return None
            if buf[stop : stop + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            self._chunks.append(bytes(buf[start:stop]))
            pos = self._chunk_pos = stop + 2


class HttpClient:
    """Keep-alive HTTP/1.1 to one origin (``scheme://host[:port]``; a path in ``base_url`` is ignored).

    ``headers`` go with every request (e.g. ``X-API-Key``). ``timeout_s`` is the default deadline of
    :meth:`request` and friends; :meth:`send` takes an absolute deadline on the loop's clock instead.
    At most ``max_idle`` idle connections are kept. Use one client per event loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = 30.0,
        max_idle: int = DEFAULT_MAX_IDLE,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if tls else 80)
        self.timeout_s, self.max_idle, self.idle_timeout_s = timeout_s, max_idle, idle_timeout_s
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        default_port = self.port == (443 if tls else 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if default_port else f"{host}:{self.port}"
        self._common = f"Host: {authority}\r\n".encode() + _header_bytes(headers or {})
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    # --- building requests -------------------------------------------------------------------------------

    def prepare(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """The whole request as bytes, to hand to :meth:`send` (as often as wanted)."""
        return self.prepare_head(method, path, content_type=content_type, headers=headers, body=bool(body)) + (
            b"%d\r\n\r\n%b" % (len(body), body) if body else b""
        )

    def prepare_head(
        self,
        method: str,
        path: str,
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bool = True,
    ) -> bytes:
        """The request up to its Content-Length value when ``body``: append ``b"%d\\r\\n\\r\\n" % len(body)``
        and the body to finish it (cheaper than :meth:`prepare` for a body that changes every time)."""
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError(f"bad request path {path!r}")
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._common + _header_bytes(headers or {})
        if content_type:
            head += _header_bytes({"Content-Type": content_type})
        if body:
            return head + b"Content-Length: "
        if method in ("POST", "PUT", "PATCH"):
            return head + b"Content-Length: 0\r\n\r\n"
        return head + b"\r\n"

    # --- sending -----------------------------------------------------------------------------------------

    async def send(self, data: bytes, deadline: float | None = None) -> Response:
        """Send prepared request bytes; ``deadline`` is an absolute ``loop.time()`` (None: no deadline).

        A GET (or HEAD, OPTIONS) that finds its reused connection closed before any answer is sent
        once more on a new connection; other methods are not (the server may have acted on them).
        """
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():  # nobody waits for this answer any more
            raise TimeoutError("deadline passed before sending")
        conn = self._take_idle(loop)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(loop, deadline)
        try:
            return await self._exchange(loop, conn, data, deadline)
        except _ClosedEarly:
            if not (reused and data.startswith(_IDEMPOTENT)):
                raise
        return await self._exchange(loop, await self._connect(loop, deadline), data, deadline)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One request with a deadline of ``timeout`` s from now (default ``timeout_s``)."""
        data = self.prepare(method, path, body, content_type=content_type, headers=headers)
        t = self.timeout_s if timeout is None else timeout
        deadline = None if t is None else asyncio.get_running_loop().time() + t
        return await self.send(data, deadline)

    async def get(self, path: str, *, timeout: float | None = None) -> Response:
        return await self.request("GET", path, timeout=timeout)

    async def post(
        self, path: str, body: object, *, content_type: str = JSON, timeout: float | None = None
    ) -> Response:
        """POST ``body``: bytes as they are, anything else serialized as JSON."""
        if not isinstance(body, bytes | bytearray | memoryview):
            body = orjson.dumps(body)
        return await self.request("POST", path, bytes(body), content_type=content_type, timeout=timeout)

    async def close(self) -> None:
        """Close every connection, idle or busy (a request still waiting fails with ConnectionResetError)."""
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost before the loop may close

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # --- connections -------------------------------------------------------------------------------------

    def _take_idle(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and now - conn.idle_since <= self.idle_timeout_s:
                return conn
            conn.close()  # closed by the peer, or idle too long (the ones below are older still)
            self._open.discard(conn)
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> _Connection:
        connecting = loop.create_connection(
            _Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
        )
        if deadline is None:
            _, conn = await connecting
        else:
            remaining = deadline - loop.time()
            if remaining <= 0:
                connecting.close()
                raise TimeoutError("deadline passed before connecting")
            _, conn = await asyncio.wait_for(connecting, remaining)
        self._open.add(conn)
        return conn

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, data: bytes, deadline: float | None
    ) -> Response:
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            conn.start(data, waiter)
            response = await waiter
        except BaseException:  # timeout, cancellation, broken connection: the answer is cut short
            conn.abort()
            self._open.discard(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(loop, conn)
        return response

    def _release(self, loop: asyncio.AbstractEventLoop, conn: _Connection) -> None:
        if conn.reusable and not conn.closed and len(self._idle) < self.max_idle:
            conn.idle_since = loop.time()
            self._idle.append(conn)
            return
        conn.close()
        self._open.discard(conn)


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("deadline passed waiting for the answer"))


def _header_bytes(headers: Mapping[str, str]) -> bytes:
    out = []
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n") or ":" in name:
            raise ValueError(f"bad header {name!r}")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")
