"""The one-call predict routes' common case, answered without FastAPI's request machinery.

At saturation FastAPI's routing, dependency solving and body validation were about 45 % of an API
process's CPU for a one-row ``POST /predict`` (py-spy), more than the route's own work. This ASGI layer sits
inside the edge (keys and body limits are checked already) and answers a small JSON body (up to
``FAST_MAX_BYTES``) of the plain shape, ``{"X": [numbers], "work": int}`` or
``{"instances": [[numbers], ...], "work_ms": int}``, by calling the same answer functions as the routes.
Anything else (another content type, malformed JSON, a missing or extra field, a non-number, a negative
work) is replayed to FastAPI untouched, so every refusal keeps the route's status, message and field.
Errors raised while answering go to the app's own exception handlers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request

from api.edge import ASGIApp, Message, Receive, Scope, Send, declared_length, header
from api.routes.predict import compat_answer, predict_answer, router
from api.security import KEY_ID_STATE

Answer = Callable[[Any, list, int, str, str | None], Awaitable[dict]]
# Other JSON types (``+json``, none at all) are the route's to judge, as ``api.inputs.require_json`` does.
JSON_TYPES = (b"application/json",)
# Past ~40 rows, checking each value in Python costs more than pydantic's validation in Rust (1,000 rows:
# 3.1 against 2.0 ms), which is then worth FastAPI's fixed cost: a bigger body goes to the route.
FAST_MAX_BYTES = 16 * 1024


def _is_numbers(row: Any) -> bool:
    # The schemas' strict floats: ints and floats, never bools (``type() is``, not isinstance); finite.
    if type(row) is not list or not row:
        return False
    for v in row:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return False
        elif t is not int:
            return False
    return True


def _work(body: dict, name: str) -> int | None:
    w = body.get(name, 0)
    return w if type(w) is int and w >= 0 else None


def compat_body(body: Any) -> tuple[list, int] | None:
    """``(X, work)`` of a plain ``/predict`` body, None for anything the route itself should judge."""
    if type(body) is not dict or not body.keys() <= {"X", "work"}:
        return None
    x, work = body.get("X"), _work(body, "work")
    if work is None or not _is_numbers(x):
        return None
    return x, work


def predict_body(body: Any) -> tuple[list, int] | None:
    """``(instances, work_ms)`` of a plain ``/v1/predict`` body, None for anything the route should judge."""
    if type(body) is not dict or not body.keys() <= {"instances", "work_ms"}:
        return None
    rows, work = body.get("instances"), _work(body, "work_ms")
    if work is None or type(rows) is not list or not rows or not all(_is_numbers(r) for r in rows):
        return None
    return rows, work


ROUTES: dict[str, tuple[Callable[[Any], tuple[list, int] | None], Answer]] = {
    "/predict": (compat_body, compat_answer),
    "/v1/predict": (predict_body, predict_answer),
}


def _json_content(scope: Scope) -> bool:
    ctype = header(scope, b"content-type")
    return ctype is not None and ctype.split(b";")[0].strip().lower() in JSON_TYPES


def _declared_over(scope: Scope) -> bool:
    # A body declared past the bound goes to the route unread, rather than being read here and replayed.
    length = declared_length(scope)
    return length is not None and length > FAST_MAX_BYTES


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body; None if the client went away first."""
    parts = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


class FastPredict:
    """Answer ``POST /predict`` and ``POST /v1/predict`` of the plain shape; hand everything else on."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, rollout_key_header: str) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.rollout_key = rollout_key_header.lower().encode("latin-1")
        # The route objects, so the request metrics label these requests as FastAPI's routing would.
        self._routes = {
            r.path: r for r in router.routes if isinstance(r, APIRoute) and r.path in ROUTES and "POST" in r.methods
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        key_id = scope.get("state", {}).get(KEY_ID_STATE)
        if plan is None or key_id is None or not _json_content(scope) or _declared_over(scope):
            return await self.app(scope, receive, send)
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            parsed = plan[0](orjson.loads(raw)) if len(raw) <= FAST_MAX_BYTES else None  # a chunked body
        except orjson.JSONDecodeError:
            parsed = None
        st = getattr(self.fastapi_app.state, "api", None)
        route = self._routes.get(scope["path"])
        if parsed is None or st is None or route is None:
            return await self.app(scope, _replay(raw, receive), send)
        scope["route"] = route
        routing = header(scope, self.rollout_key)
        try:
            answer = await plan[1](st, parsed[0], parsed[1], key_id, routing.decode("latin-1") if routing else None)
        except Exception as exc:
            return await self._error(scope, receive, send, exc)
        content = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _error(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """The answer the app's exception handlers give ``exc`` (its class's nearest handler)."""
        handlers = self.fastapi_app.exception_handlers
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise exc
        response = await handler(Request(scope, receive), exc)
        await response(scope, receive, send)
