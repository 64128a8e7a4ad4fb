"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load generation.

httpx spends ~2-3 ms of CPU per request; on a 2-core machine shared with the
system under test, 30 simultaneous requests then queue ~100 ms in the client
itself and the benchmark would measure the client. This one costs a fraction
of that. It speaks only what the benchmarks need: POST/GET with a JSON body,
Content-Length framed answers.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson


class RawClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        u = urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(method, path, body), self.timeout_s)

    async def _request(self, method: str, path: str, body: object | None) -> tuple[int, bytes]:
        payload = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        reader, writer = await self._conn()
        try:
            writer.write(head + payload)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            status = int(status_line.split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, data

    async def post(self, path: str, body: object) -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    async def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()
