"""The load generator's HTTP client, and the generator on it, against real local servers (asyncio, 127.0.0.1).

Each test's server answers by a small script: how the answer is framed, when the connection closes,
whether it answers at all. No assertion here is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from loadtest import LoadtestConfig, run_loadtest
from loadtest.config import Route
from loadtest.http import HttpClient, ProtocolError, Response
from loadtest.mix import parse_mix
from loadtest.profile import Arrivals
from loadtest.records import BAD_RESPONSE, ERROR, TIMEOUT
from loadtest.routes import Payloads, RouteSender


@dataclass
class Request:
    conn: int  # which connection it came on, from 0
    index: int  # its position on that connection, from 0
    head: bytes
    body: bytes

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode()

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name.lower().encode():
                return v.strip().decode()
        return None


# A handler writes the answer (or not) and returns whether to keep the connection open.
Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    handler: Handler
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        conn, self.connections = self.connections, self.connections + 1
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionResetError):  # the client gave up or went away
                    return
                req = Request(conn, index, head, b"")
                req.body = await reader.readexactly(int(req.header("content-length") or 0))
                self.requests.append(req)
                index += 1
                if not await self.handler(req, writer):
                    return
        finally:
            writer.close()


def answer(status: int, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_handler(doc: object = None, status: int = 200) -> Handler:
    body = orjson.dumps({"ok": True} if doc is None else doc)

    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(answer(status, body))
        return True

    return handle


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- framing and keep-alive -------------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_headers() -> None:
    async def main() -> list[Response]:
        async with Server(json_handler({"a": 1})) as srv, HttpClient(srv.url, headers={"X-API-Key": "k"}) as c:
            out = [await c.get("/one") for _ in range(3)]
            out.append(await c.post("/two", {"x": [1, 2]}))
            out.append(await c.post("/three", b'{"raw":true}'))
            assert srv.connections == 1
            assert [r.path for r in srv.requests] == ["/one"] * 3 + ["/two", "/three"]
            assert all(r.header("x-api-key") == "k" for r in srv.requests)
            assert srv.requests[0].header("host") == f"127.0.0.1:{srv.port}"
            assert orjson.loads(srv.requests[3].body) == {"x": [1, 2]}
            assert srv.requests[3].header("content-type") == "application/json"
            assert srv.requests[4].body == b'{"raw":true}'
            return out

    responses = run(main())
    assert all(r == Response(200, b'{"a":1}') for r in responses)  # type: ignore[union-attr]


def test_content_length_body_arriving_in_pieces() -> None:
    big = bytes(range(256)) * 1000  # 256 KB

    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        data = answer(200, big, "connection: keep-alive")
        for i in range(0, len(data), 10_000):
            w.write(data[i : i + 10_000])
            await w.drain()
            await asyncio.sleep(0.001)
        return True

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            assert await c.get("/big") == Response(200, big)
            assert await c.get("/big") == Response(200, big)
            assert srv.connections == 1

    run(main())


def test_chunked_body_with_extensions_and_trailers() -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Type: application/json\r\n\r\n5;ext=1\r\n",
        b'{"a":\r\n',
        b"c\r\n" + b"[1,2,3,4,5]}" + b"\r\n",
        b"0\r\n",
        b"X-Trailer: yes\r\n\r\n",
    ]

    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        for p in pieces:
            w.write(p)
            await w.drain()
            await asyncio.sleep(0.001)
        return True

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            for _ in range(2):
                r = await c.get("/chunked")
                assert r.status == 200 and r.json() == {"a": [1, 2, 3, 4, 5]}
            assert srv.connections == 1  # the connection is reused after a chunked answer

    run(main())


def test_chunked_body_in_one_write_and_100_continue_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )

    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(data)
        return True

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            assert await c.get("/") == Response(201, b"abc")
            assert await c.get("/") == Response(201, b"abc")
            assert srv.connections == 1

    run(main())


def test_body_read_until_the_server_closes() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        return False  # then close: that ends the body

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            assert await c.get("/") == Response(200, b"all of it")
            assert await c.get("/") == Response(200, b"all of it")
            assert srv.connections == 2

    run(main())


def test_connection_close_header_opens_a_new_connection() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(answer(200, b"bye", "connection: close"))
        return False

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            for _ in range(3):
                assert await c.post("/x", b"{}") == Response(200, b"bye")
            assert srv.connections == 3
            assert c.open_connections == 0

    run(main())


def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(answer(200, b"ok"))  # says nothing about closing, then closes
        await w.drain()
        return False

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            assert await c.post("/a", b"{}") == Response(200, b"ok")
            await asyncio.sleep(0.05)  # the close reaches the client
            assert await c.post("/b", b"{}") == Response(200, b"ok")
            assert srv.connections == 2

    run(main())


def test_get_is_retried_once_on_a_reused_connection_closed_before_answering() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        if req.conn == 0 and req.index == 1:
            return False  # close without a word, as a server whose keep-alive just expired
        w.write(answer(200, b"ok"))
        return True

    async def main(method: str) -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            assert (await c.request(method, "/")).status == 200
            if method == "GET":
                assert await c.request(method, "/") == Response(200, b"ok")
                assert srv.connections == 2
            else:  # the server may have acted on a POST: not sent twice
                with pytest.raises(ConnectionResetError):
                    await c.request(method, "/", b"{}")
                assert srv.connections == 1

    run(main("GET"))
    run(main("POST"))


# --- failures -----------------------------------------------------------------------------------------------------


def test_server_closing_mid_answer_is_a_connection_error_and_a_recorded_error() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await w.drain()
        return False

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            with pytest.raises(ConnectionResetError):
                await c.post("/predict", b"{}")
            sender = RouteSender(c, Route.COMPAT, 1)
            assert await sender.send(b"{}", asyncio.get_running_loop().time() + 5) == ERROR
            assert c.open_connections == 0

    run(main())


def test_timeout_raises_and_drops_the_connection() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        if req.path == "/hang":
            await asyncio.sleep(3600)
        w.write(answer(200, b"ok"))
        return True

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            with pytest.raises(TimeoutError):
                await c.get("/hang", timeout=0.1)
            assert c.open_connections == 0  # an answer cut short: that connection is never reused
            sender = RouteSender(c, Route.COMPAT, 1)
            loop = asyncio.get_running_loop()
            assert await sender.send(b"{}", loop.time() - 1) == TIMEOUT  # deadline already passed: not sent
            assert len(srv.requests) == 1
            assert await c.get("/fine") == Response(200, b"ok")
            assert srv.connections == 2

    run(main())


def test_connection_refused_raises_and_is_recorded_as_an_error() -> None:
    async def main() -> None:
        async with HttpClient(f"http://127.0.0.1:{free_port()}") as c:
            with pytest.raises(ConnectionRefusedError):
                await c.get("/")
            sender = RouteSender(c, Route.PREDICT, 1)
            assert await sender.send(b"{}", asyncio.get_running_loop().time() + 5) == ERROR

    run(main())


def test_garbage_is_a_protocol_error() -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async def main() -> None:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            with pytest.raises(ProtocolError):
                await c.get("/")
            assert await RouteSender(c, Route.COMPAT, 1).send(b"{}", asyncio.get_running_loop().time() + 5) == ERROR

    run(main())


def test_close_closes_every_connection() -> None:
    async def main() -> None:
        async with Server(json_handler()) as srv:
            c = HttpClient(srv.url)
            await asyncio.gather(*(c.get("/") for _ in range(4)))
            assert c.open_connections == 4
            await c.close()
            assert c.open_connections == 0
            await asyncio.sleep(0.05)
            assert srv.connections == 4

    run(main())


# --- routes on this client --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "doc", "status", "expected"),
    [
        (Route.COMPAT, {"prediction": 1}, 200, "200"),
        (Route.COMPAT, {"nothing": 1}, 200, BAD_RESPONSE),
        (Route.PREDICT, {"predictions": [1, 0]}, 200, "200"),
        (Route.PREDICT, {"predictions": [1]}, 200, BAD_RESPONSE),
        (Route.PREDICT, {"detail": "slow down"}, 429, "429"),
    ],
)
def test_route_statuses(route: Route, doc: object, status: int, expected: str) -> None:
    async def main() -> str:
        async with Server(json_handler(doc, status)) as srv, HttpClient(srv.url) as c:
            result = await RouteSender(c, route, 2).send(b'{"x":1}', asyncio.get_running_loop().time() + 5)
            assert srv.requests[0].path == {Route.COMPAT: "/predict", Route.PREDICT: "/v1/predict"}[route]
            assert srv.requests[0].body == b'{"x":1}'
            return result

    assert run(main()) == expected


def test_jobs_route_polls_until_done() -> None:
    polls = 0

    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        nonlocal polls
        if req.path == "/v1/jobs":
            w.write(answer(202, b'{"job_id":"j1","status":"queued","status_url":"/v1/jobs/j1"}'))
        else:
            polls += 1
            w.write(answer(200, b'{"status":"%s"}' % (b"running" if polls < 3 else b"succeeded")))
        return True

    async def main() -> str:
        async with Server(handle) as srv, HttpClient(srv.url) as c:
            status = await RouteSender(c, Route.JOBS, 1).send(b"{}", asyncio.get_running_loop().time() + 5)
            assert [r.path for r in srv.requests] == ["/v1/jobs"] + ["/v1/jobs/j1"] * 3
            assert srv.connections == 1
            return status

    assert run(main()) == "200"


# --- the generator on this client -------------------------------------------------------------------------------


@contextlib.contextmanager
def server_in_thread(handler: Handler) -> Iterator[Server]:
    """A Server on its own event loop in a thread, for run_loadtest (which runs its own loop here)."""
    loop = asyncio.new_event_loop()
    srv = Server(handler)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(srv.__aenter__(), loop).result(5)
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.__aexit__(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_generator_held_back_reports_latency_from_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building each body blocks the loop for 15 ms at 100 arrivals/s: the generator falls ever further behind.
    Latency counts from the scheduled time, so it includes that lag; arrivals later than their whole timeout
    are timeouts, never sent."""
    build = Payloads.body

    def slow_body(self: Payloads, work_ms: int) -> bytes:
        time.sleep(0.015)
        return build(self, work_ms)

    monkeypatch.setattr(Payloads, "body", slow_body)
    timeout_s = 0.3
    progress = io.StringIO()
    monkeypatch.setattr(sys, "stderr", progress)
    with server_in_thread(json_handler({"prediction": 1})) as srv:
        config = LoadtestConfig(
            url=srv.url, rate=100.0, duration_s=1.0, route=Route.COMPAT, arrivals=Arrivals.UNIFORM,
            mix=parse_mix("0:1"), seed=1, out_dir=tmp_path, timeout_s=timeout_s,
        )  # fmt: skip
        run_loadtest(config)
        sent_to_server = sum(r.path == "/predict" for r in srv.requests)
    summary = json.loads((tmp_path / "summary.json").read_text())
    with (tmp_path / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["offered"] == 100 and summary["accounting"]["balanced"]
    lags = {int(r["id"]): float(r["sent_s"]) - float(r["scheduled_s"]) for r in rows}
    assert max(lags.values()) > timeout_s  # it did fall behind, by more than the timeout
    ok = [r for r in rows if r["status"] == "200"]
    assert ok and all(float(r["latency_s"]) >= lags[int(r["id"])] for r in ok)
    late = [r for r in rows if lags[int(r["id"])] > timeout_s]
    assert late and all(r["status"] == "timeout" for r in late)
    assert sent_to_server <= summary["sent"] - len(late)  # the late ones never went out
    assert summary["latency_s"]["max"] >= max(lags[int(r["id"])] for r in ok)
    assert summary["send_lag_s"]["max"] == pytest.approx(max(lags.values()), abs=1e-5)
    # The progress line's running counts agree with the totals.
    last = [line for line in progress.getvalue().splitlines() if "timeouts" in line][-1]
    assert f"timeouts {summary['timeouts']}" in last and "errors 0" in last and "dropped 0" in last


def test_a_slow_server_shows_in_latency_not_in_send_lag(tmp_path: Path) -> None:
    async def handle(req: Request, w: asyncio.StreamWriter) -> bool:
        if req.path == "/predict":
            await asyncio.sleep(0.2)
        w.write(answer(200, b'{"prediction":1}'))
        return True

    with server_in_thread(handle) as srv:
        config = LoadtestConfig(
            url=srv.url, rate=40.0, duration_s=1.0, route=Route.COMPAT, arrivals=Arrivals.UNIFORM,
            mix=parse_mix("0:1"), seed=1, out_dir=tmp_path, progress=False,
        )  # fmt: skip
        run_loadtest(config)
        connections = srv.connections
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] == summary["sent"] == 40
    assert summary["latency_s"]["p50"] >= 0.2
    assert summary["send_lag_s"]["p99"] < summary["latency_s"]["p50"]
    # ~8 requests open at a time: a handful of connections, each reused, plus one for the status sampler.
    assert connections < 40
