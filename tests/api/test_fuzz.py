"""Fuzz the live API from its own OpenAPI schema (schemathesis): whatever arrives, no 5xx, and every
answer is what the schema declares (status code, content type, headers, body schema).

Valid and invalid (negative mode) requests go to every operation of a real uvicorn process on the shared
stack, with an admin key so the admin routes are reached too; every route the app serves must be in the
schema (the docs pages aside), so the run covers every route. Bounded: a few examples per operation and
mode, no shrinking, the whole run well under a minute.

The cases are drawn with Hypothesis from each operation's strategy rather than through
``schema.parametrize()``: its lazy (fixture-loaded) form reads a pytest node attribute that
pytest 9 no longer has, and the schema only exists once the server runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from api.app import create_app
from inferpool.settings import Settings

ADMIN_SECRET = "fuzz-admin-secret-9c41"
EXAMPLES_PER_MODE = 10
N_FEATURES = 20
MAX_WORK_MS = 50  # positive cases carry real simulated work: keep each one short
# Served by FastAPI for the schema itself: not operations of the API.
DOC_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_api(stack) -> Iterator[str]:
    """A second API process on the shared stack with an admin key; the shared API stays untouched."""
    shared_url = stack.url
    url = stack.start_api(
        INFERPOOL_ADMIN_KEYS=f"fuzzer:{ADMIN_SECRET}",
        INFERPOOL_MAX_BODY_BYTES=str(256 * 1024),
        INFERPOOL_MAX_WORK_MS=str(MAX_WORK_MS),
    )
    stack.url = shared_url  # start_api records the newest API; other tests keep using the shared one
    proc = stack.procs[-1]
    yield url
    proc.stop()


def _tighten(raw: dict) -> dict:
    """The served schema cannot know the model's width; say it, so positive cases reach the workers."""

    def walk(node: object) -> None:
        if isinstance(node, dict):
            props = node.get("properties", {})
            rows = props.get("instances", {}).get("items")
            if isinstance(rows, dict) and rows.get("type") == "array":
                rows.update(minItems=N_FEATURES, maxItems=N_FEATURES)
                props["instances"]["maxItems"] = 8
            if props.get("X", {}).get("type") == "array":
                props["X"].update(minItems=N_FEATURES, maxItems=N_FEATURES)
            for name in ("work_ms", "work"):
                if props.get(name, {}).get("type") == "integer":
                    props[name]["maximum"] = MAX_WORK_MS
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(raw)
    return raw


def _fuzz_operation(operation, mode: GenerationMode, base_url: str, session: requests.Session) -> tuple[int, list[str]]:
    """(requests sent, failures) for one operation in one generation mode."""
    found: list[str] = []
    sent = 0

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        nonlocal sent
        sent += 1
        r = case.call(base_url=base_url, session=session, headers={"X-API-Key": ADMIN_SECRET}, timeout=15)
        where = f"{case.method} {case.formatted_path} ({mode.value}) -> {r.status_code}"
        if r.status_code >= 500 or "Traceback" in r.text:
            found.append(f"{where}: {r.text[:200]}")
        try:
            case.validate_response(r, checks=CONFORMANCE)
        except Exception as exc:  # schemathesis raises a group of the checks that failed
            found.append(f"{where}: not as declared: {str(exc)[:400]}")

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters, in negative mode)
        run()
    return sent, found


def _routes(routes: list, prefix: str = "") -> Iterator[tuple[str, str]]:
    for r in routes:
        included = getattr(r, "original_router", None)  # FastAPI >= 0.16x keeps included routers whole
        if included is not None:
            yield from _routes(included.routes, prefix + getattr(r.include_context, "prefix", ""))
        elif isinstance(r, Route) and prefix + r.path not in DOC_PATHS:
            yield from ((m, prefix + r.path) for m in (r.methods or set()) - {"HEAD"})


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the app itself, not from its schema."""
    return set(_routes(create_app(Settings()).routes))


@pytest.mark.timeout(150)
def test_no_server_error_anywhere_in_the_schema(fuzz_api):
    raw = httpx.get(f"{fuzz_api}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(_tighten(raw))
    operations = [result.ok() for result in schema.get_all_operations()]
    covered = {(op.method.upper(), op.path) for op in operations}
    missing = served_routes() - covered
    assert not missing, f"routes served but not in the schema, so never fuzzed: {sorted(missing)}"
    failures: list[str] = []
    sent: dict[tuple[str, str], int] = {}
    with requests.Session() as session:
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                n, found = _fuzz_operation(op, mode, fuzz_api, session)
                sent[(op.method.upper(), op.path)] = sent.get((op.method.upper(), op.path), 0) + n
                failures += found
    assert not failures, "\n".join(failures[:20])
    assert min(sent.values()) >= 1, sent  # every operation was reached, not just listed (no parameters: one case)
    assert sum(sent.values()) >= 10 * len(operations)


def test_api_still_serves_and_logged_no_unhandled_error(fuzz_api, stack):
    r = httpx.post(f"{fuzz_api}/v1/predict", json={"instances": [[0.5] * 20]}, timeout=15)
    assert r.status_code == 200, r.text
    log = next(p for p in stack.procs if p.name == "api" and fuzz_api.endswith(str(p.popen.args[-1]))).log
    assert "Traceback" not in log.read_text()
