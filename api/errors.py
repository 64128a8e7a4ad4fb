"""Where inferpool's errors become HTTP answers: RFC 9457 problem details, never a stack trace.

Every error, from a route or refused at the edge (``api.edge``) before any route runs, is one
``application/problem+json`` body (``api.schemas.Problem``): ``type`` a URI naming the kind
(``tag:inferpool,2026:problem/<code>``: an identifier, not a page to fetch), ``title`` that kind's
summary, ``status``, ``detail`` (what is wrong, naming the field), ``instance`` (the request path), and
our extensions ``field``, ``details`` (each invalid field of a 422) and ``job_id`` (a 504's id to poll).
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import inputs
from api.responses import OrjsonResponse
from inferpool.errors import (
    AuthError,
    BrokerUnavailable,
    InferpoolError,
    InputError,
    JobNotFound,
    MalformedBody,
    ModelError,
    Overloaded,
    PredictionFailed,
    ResultTimeout,
    RolloutError,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)


class PayloadTooLarge(InferpoolError):
    """Raised when a request body exceeds the configured limit."""


class Conflict(InferpoolError):
    """Raised when another request with the same Idempotency-Key is still being accepted; retry shortly."""


class QuotaExceeded(Overloaded):
    """Raised when a key's quota does not cover a request now; retry after ``retry_after_s``."""


PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "tag:inferpool,2026:problem/"
# Each problem type's title: the same for every occurrence (RFC 9457 3.1.3); the detail varies.
TITLES = {
    "malformed_body": "Malformed body",
    "unsupported_media_type": "Unsupported media type",
    "invalid_input": "Invalid input",
    "payload_too_large": "Body too large",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "unauthorized": "API key missing or wrong",
    "quota_exceeded": "Quota exceeded",
    "overloaded": "Overloaded",
    "conflict": "Request in progress",
    "unavailable": "Temporarily unavailable",
    "timeout": "Answer not ready in time",
    "model_unavailable": "No model to serve",
    "internal": "Internal error",
}


class ProblemResponse(OrjsonResponse):
    media_type = PROBLEM_MEDIA_TYPE


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_type(code: str) -> str:
    """The ``type`` URI of a problem code, e.g. ``invalid_input``."""
    return PROBLEM_TYPE_PREFIX + code


def error_response(
    status: int, error: str, message: str, instance: str, headers: dict | None = None, **extra: Any
) -> ProblemResponse:
    """A problem answer: ``error`` is the code (its type URI's last part), ``message`` the detail."""
    title = TITLES.get(error) or _phrase(status)
    body = {"type": problem_type(error), "title": title, "status": status, "detail": message, "instance": instance}
    body.update((k, v) for k, v in extra.items() if v is not None)
    return ProblemResponse(body, status_code=status, headers=headers)


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid")
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed_body", f"body: not valid JSON ({msg})", request.url.path, field="body")
    details = [{"field": _field_of(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errs[:20]]
    await inputs.record_refusal(request, (_field_of(tuple(e.get("loc", ()))) for e in errs))  # drift signal
    return error_response(422, "invalid_input", f"{field}: {msg}", request.url.path, field=field, details=details)


async def _inferpool(request: Request, exc: InferpoolError) -> ProblemResponse:
    path = request.url.path
    if isinstance(exc, MalformedBody):
        return error_response(400, "malformed_body", str(exc), path, field=exc.field)
    if isinstance(exc, UnsupportedMediaType):
        return error_response(415, "unsupported_media_type", str(exc), path, field=exc.field)
    if isinstance(exc, InputError):
        await inputs.record_refusal(request, [exc.field], getattr(exc, "cells", ()))  # drift signal
        return error_response(422, "invalid_input", str(exc), path, field=exc.field)
    if isinstance(exc, RolloutError):
        return error_response(409, "rollout_conflict", str(exc), path)
    if isinstance(exc, PayloadTooLarge):
        return error_response(413, "payload_too_large", str(exc), path)
    if isinstance(exc, JobNotFound):
        return error_response(404, "not_found", str(exc), path)
    if isinstance(exc, AuthError):
        return error_response(401, "unauthorized", str(exc), path, headers={"WWW-Authenticate": "ApiKey"})
    if isinstance(exc, Overloaded):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        code = "quota_exceeded" if isinstance(exc, QuotaExceeded) else "overloaded"
        return error_response(429, code, str(exc), path, headers={"Retry-After": retry})
    if isinstance(exc, Conflict):
        return error_response(409, "conflict", str(exc), path, headers={"Retry-After": "1"})
    if isinstance(exc, BrokerUnavailable):
        return error_response(503, "unavailable", str(exc), path, headers={"Retry-After": "1"})
    if isinstance(exc, ResultTimeout):
        return error_response(504, "timeout", str(exc), path, job_id=exc.job_id)
    if isinstance(exc, PredictionFailed):
        return error_response(500, "prediction_failed", str(exc), path)
    if isinstance(exc, ModelError):
        return error_response(503, "model_unavailable", str(exc), path, headers={"Retry-After": "5"})
    logger.error("unmapped inferpool error: %r", exc)
    return error_response(500, "internal", "internal error", path)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    return error_response(exc.status_code, code, str(exc.detail), request.url.path, headers=headers)


async def _redis_down(request: Request, exc: Exception) -> ProblemResponse:
    # Redis gone, restarting (LOADING) or failed over mid-request: unavailable for now, not broken.
    detail = f"cannot reach Redis: {type(exc).__name__}"
    return error_response(503, "unavailable", detail, request.url.path, headers={"Retry-After": "1"})


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    # Log the trace for operators; the client gets a plain message, never the trace.
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error", request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InferpoolError, _inferpool)
    app.add_exception_handler(StarletteHTTPException, _http)
    for exc_class in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError):
        app.add_exception_handler(exc_class, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
