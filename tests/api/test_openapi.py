"""The served OpenAPI schema says what the API answers: a body for every route, errors as RFC 9457
problem details, the headers that come with them, and the installed package's version.

In-process, without the lifespan (the schema needs no Redis); that live answers match it is test_fuzz's job.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import pytest

from api.app import create_app
from inferpool.settings import Settings

PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    """What /openapi.json serves (FastAPI's route answers ``app.openapi()``), read back through JSON."""
    return json.loads(json.dumps(create_app(Settings()).openapi()))


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def test_version_is_the_installed_package_version(served):
    assert served["info"]["version"] == metadata.version("inferpool")


def test_every_route_declares_its_success_body(served):
    for method, path, op in operations(served):
        ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert ok, (method, path)
        for status, response in ok.items():
            content = response.get("content", {})
            assert content and all(m.get("schema") for m in content.values()), (method, path, status)
            schema = next(iter(content.values()))["schema"]
            # a named model (or plain text for /metrics), never FastAPI's empty "any JSON" placeholder
            assert schema.get("$ref") or schema.get("type") == "string", (method, path, status, schema)


def test_every_error_is_a_problem_document(served):
    """4xx/5xx answer application/problem+json with the Problem schema; /readyz's 503 is its own body."""
    for method, path, op in operations(served):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            if (path, status) == ("/readyz", "503"):
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}
                }
                continue
            assert response["content"] == {"application/problem+json": {"schema": PROBLEM}}, (method, path, status)
    assert "HTTPValidationError" not in str(served), "FastAPI's own 422 body is not what the API sends"


def test_the_problem_schema_is_rfc_9457_with_our_extensions(served):
    schemas = served["components"]["schemas"]
    problem = schemas["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}
    assert {"field", "details", "job_id"} <= set(problem["properties"])
    item = problem["properties"]["details"]["anyOf"][0]["items"]
    assert set(schemas[item["$ref"].rsplit("/", 1)[-1]]["required"]) == {"field", "message"}


def test_headers_are_declared(served):
    paths = served["paths"]
    submit = paths["/v1/jobs"]["post"]
    assert {"Idempotency-Key"} <= {p["name"] for p in submit["parameters"] if p["in"] == "header"}
    for status in ("200", "202"):
        assert "Location" in submit["responses"][status]["headers"], status
    for method, path, op in operations(served):
        # A rollout's 409 is a state conflict an operator resolves, not a retry; the rest say when to retry.
        for status in ("409", "429", "503"):
            if status in op["responses"] and path != "/readyz" and not path.startswith("/v1/admin/rollout"):
                assert "Retry-After" in op["responses"][status].get("headers", {}), (method, path, status)
        if "401" in op["responses"]:
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], (method, path)
            assert op.get("security"), (method, path)  # X-API-Key, declared as the security scheme
    assert served["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "API key (when keys are configured).",
    }  # fmt: skip
