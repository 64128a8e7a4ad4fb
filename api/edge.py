"""The ASGI layer every HTTP request crosses before any route code: key check and body limits.

A stranger, or a body over its route's limit, is refused from the request line and headers alone, before
one byte of the body is read, so sending 100 MB with a wrong key costs the API nothing but the refusal.
Limits are per route: ``/v1/jobs`` takes megabytes (``INFERPOOL_MAX_BODY_BYTES``), every other route
kilobytes (``INFERPOOL_MAX_CALL_BODY_BYTES``). A declared Content-Length over the limit is refused at once;
a streamed (chunked) body is counted as it is read and refused when it crosses the limit.

A response sent before the request's body was read to its end (a refusal here, or a route that found an
error part way through a body) with more than ``DRAIN_MAX_BYTES`` still to come, or an unknown amount (a
chunked body), closes the connection (``Connection: close``): uvicorn would otherwise read and discard the
rest to reuse the connection, 100 MB for a stranger's 100 MB. Clients that read while they send (curl,
httpx, browsers) still get the answer. A smaller rest is left to uvicorn to drain: closing a socket with
unread data in it resets the connection, which can reach a client before the answer it has not read yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api import errors
from api.security import KEY_ID_STATE, KeyTables
from inferpool.errors import AuthError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JOB_PATHS = frozenset({"/v1/jobs"})
# Up to this much unread body, uvicorn reads and drops it to keep the connection; beyond, the API hangs up.
DRAIN_MAX_BYTES = 1024 * 1024


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case, as ASGI servers give them), None if absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def declared_length(scope: Scope) -> int | None:
    """Content-Length as sent, None for a chunked body or none (uvicorn has already refused a malformed one)."""
    raw = header(scope, b"content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def _hang_up(scope: Scope, read: int, done: bool) -> bool:
    """Whether an answer now should close the connection: more (or an unknown amount) of body to come."""
    if done:
        return False
    length = declared_length(scope)
    if length is None:
        return header(scope, b"transfer-encoding") is not None
    return length - read > DRAIN_MAX_BYTES


class EdgeGuard:
    """Authenticate on the headers, bound the body by route, close connections whose body was left unread."""

    def __init__(self, app: ASGIApp, keys: KeyTables, call_limit_bytes: int, job_limit_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.call_limit_bytes = call_limit_bytes
        self.job_limit_bytes = job_limit_bytes

    def limit_of(self, path: str) -> int:
        return self.job_limit_bytes if path in JOB_PATHS else self.call_limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = header(scope, b"x-api-key")
        try:
            key_id = self.keys.caller_of(scope["path"], given.decode("latin-1") if given is not None else None)
        except AuthError as exc:
            headers = {"WWW-Authenticate": "ApiKey"}
            return await self._refuse(scope, send, 401, "unauthorized", str(exc), _hang_up(scope, 0, False), headers)
        if key_id is not None:
            scope.setdefault("state", {})[KEY_ID_STATE] = key_id
        limit = self.limit_of(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            hang_up = _hang_up(scope, 0, False)
            return await self._refuse(scope, send, 413, "payload_too_large", f"body over {limit} bytes", hang_up)
        await self._pass(scope, receive, send, limit)

    async def _pass(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen = 0
        over = started = done = False

        async def counted() -> Message:
            nonlocal seen, over, done
            msg = await receive()
            seen += len(msg.get("body", b""))
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                done = True
            if seen > limit:
                over = True
                raise errors.PayloadTooLarge(f"body over {limit} bytes")
            return msg

        async def guarded(msg: Message) -> None:
            nonlocal started
            if over:  # the app's answer to a failed read (400, or its own 413) gives way to ours
                return
            if msg["type"] == "http.response.start":
                started = True
                if _hang_up(scope, seen, done):
                    msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
            await send(msg)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            hang_up = _hang_up(scope, seen, done)
            await self._refuse(scope, send, 413, "payload_too_large", f"body over {limit} bytes", hang_up)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, code: str, message: str, hang_up: bool, headers: dict | None = None
    ) -> None:
        extra = {**(headers or {}), **({"Connection": "close"} if hang_up else {})}
        resp = errors.error_response(status, code, message, scope["path"], headers=extra or None)

        async def nothing() -> Message:  # the body is never read
            return {"type": "http.disconnect"}

        await resp(scope, nothing, send)
