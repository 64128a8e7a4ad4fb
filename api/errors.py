"""Where inferpool's errors become HTTP answers: one JSON shape, never a stack trace."""

from __future__ import annotations

import logging
import math

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


def error_response(status: int, error: str, message: str, headers: dict | None = None, **extra) -> OrjsonResponse:
    body = {"error": error, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return OrjsonResponse(body, status_code=status, headers=headers)


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid")
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed_body", f"body: not valid JSON ({msg})", field="body")
    details = [{"field": _field_of(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errs[:20]]
    await inputs.record_refusal(request, (_field_of(tuple(e.get("loc", ()))) for e in errs))  # drift signal
    return error_response(422, "invalid_input", f"{field}: {msg}", field=field, details=details)


async def _inferpool(request: Request, exc: InferpoolError) -> OrjsonResponse:
    if isinstance(exc, MalformedBody):
        return error_response(400, "malformed_body", str(exc), field=exc.field)
    if isinstance(exc, UnsupportedMediaType):
        return error_response(415, "unsupported_media_type", str(exc), field=exc.field)
    if isinstance(exc, InputError):
        await inputs.record_refusal(request, [exc.field], getattr(exc, "cells", ()))  # drift signal
        return error_response(422, "invalid_input", str(exc), field=exc.field)
    if isinstance(exc, RolloutError):
        return error_response(409, "rollout_conflict", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return error_response(413, "payload_too_large", str(exc))
    if isinstance(exc, JobNotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, AuthError):
        return error_response(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "ApiKey"})
    if isinstance(exc, Overloaded):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        code = "quota_exceeded" if isinstance(exc, QuotaExceeded) else "overloaded"
        return error_response(429, code, str(exc), headers={"Retry-After": retry})
    if isinstance(exc, Conflict):
        return error_response(409, "conflict", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, BrokerUnavailable):
        return error_response(503, "unavailable", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, ResultTimeout):
        return error_response(504, "timeout", str(exc), job_id=exc.job_id)
    if isinstance(exc, PredictionFailed):
        return error_response(500, "prediction_failed", str(exc))
    if isinstance(exc, ModelError):
        return error_response(503, "model_unavailable", str(exc), headers={"Retry-After": "5"})
    logger.error("unmapped inferpool error: %r", exc)
    return error_response(500, "internal", "internal error")


async def _http(_: Request, exc: StarletteHTTPException) -> OrjsonResponse:
    return error_response(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))


async def _redis_down(_: Request, exc: Exception) -> OrjsonResponse:
    # Redis gone, restarting (LOADING) or failed over mid-request: unavailable for now, not broken.
    return error_response(503, "unavailable", f"cannot reach Redis: {type(exc).__name__}", headers={"Retry-After": "1"})


async def _unexpected(_: Request, exc: Exception) -> OrjsonResponse:
    # Log the trace for operators; the client gets a plain message, never the trace.
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InferpoolError, _inferpool)
    app.add_exception_handler(StarletteHTTPException, _http)
    for exc_class in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError):
        app.add_exception_handler(exc_class, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
