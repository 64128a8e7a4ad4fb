"""The served OpenAPI schema: what each route answers on error, with the headers that come with it.

Routes declare their errors with ``problems(...)``. FastAPI files every declared model, and its own 422,
under ``application/json``; ``install`` moves each error onto ``application/problem+json`` with the one
``Problem`` schema (RFC 9457, ``api.errors``), which is what ``api.errors`` and ``api.edge`` send.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import PROBLEM_MEDIA_TYPE
from api.schemas import Problem

PROBLEM_REF = "#/components/schemas/Problem"
# FastAPI's own 422 schemas, replaced by Problem (whose ``details`` lists each invalid field).
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")

RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "The scheme to use: ApiKey.", "schema": {"type": "string"}}}
LOCATION = {"Location": {"description": "The job's status URL.", "schema": {"type": "string"}}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "One job per key and API key: a retry with the same body gets the same job (200).",
    "schema": {"type": "string", "maxLength": 200},
}

_DESCRIPTIONS = {
    400: "Body not parseable (field names where).",
    401: "API key missing or wrong (X-API-Key); admin routes need an admin key.",
    404: "Unknown or expired, or submitted with another key.",
    409: "A request with this Idempotency-Key is still being accepted; retry after Retry-After.",
    413: "Body over the route's limit.",
    415: "A content type this route does not read.",
    422: "Invalid input: field names the first invalid field, details each of them.",
    429: "Backpressure or the key's quota; retry after Retry-After.",
    503: "Redis unreachable or no model; retry after Retry-After.",
    504: "The answer was not ready in time: poll job_id with GET /v1/jobs/{job_id}.",
}
_HEADERS = {401: WWW_AUTHENTICATE, 409: RETRY_AFTER, 429: RETRY_AFTER, 503: RETRY_AFTER}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for a route's error statuses, each a Problem with its headers."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": Problem, "description": _DESCRIPTIONS[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


def _is_problem(media: dict[str, Any]) -> bool:
    ref = media.get("schema", {}).get("$ref", "")
    return ref == PROBLEM_REF or ref.rsplit("/", 1)[-1] in _FASTAPI_422


def problems_as_problem_json(schema: dict[str, Any]) -> dict[str, Any]:
    """Move every error response's Problem (or FastAPI's 422 body) onto application/problem+json."""
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            for status, response in op.get("responses", {}).items():
                media = response.get("content", {}).get("application/json")
                if not status.isdigit() or int(status) < 400 or media is None or not _is_problem(media):
                    continue
                response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}
                if status == "422":
                    response["description"] = _DESCRIPTIONS[422]
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_422:
        components.pop(name, None)
    return schema


def install(app: FastAPI) -> None:
    """Serve the schema with problem+json errors (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                description=app.description, routes=app.routes,
            )  # fmt: skip
            app.openapi_schema = problems_as_problem_json(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
