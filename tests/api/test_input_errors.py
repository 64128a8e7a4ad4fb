# ruff: noqa: E501 - the table of cases reads best one case per line
"""Bad input gets a clear 4xx naming the field and the rule, never a 500 or a trace, and breaks nothing.

Every case runs against a real API process (on the shared stack's Redis and workers) started with
low limits, and each bad request is followed by a good one that must still be answered.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

N_FEATURES = 20
MAX_BODY_BYTES = 256 * 1024  # /v1/jobs
MAX_CALL_BODY_BYTES = 64 * 1024  # every other route
MAX_ROWS_PER_REQUEST = 64
MAX_ROWS_PER_JOB = 2000
MAX_WORK_MS = 500
RESULT_TTL_S = 3

ROW = [0.5] * N_FEATURES
ROW_JSON = ",".join(["0.5"] * (N_FEATURES - 1))  # a row's last 19 values, to put a raw token before


@pytest.fixture(scope="module")
def limited(stack) -> Iterator[httpx.Client]:
    """An API process with small limits and a short result TTL, beside the shared one."""
    shared_url = stack.url
    url = stack.start_api(
        INFERPOOL_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        INFERPOOL_MAX_CALL_BODY_BYTES=str(MAX_CALL_BODY_BYTES),
        INFERPOOL_MAX_ROWS_PER_REQUEST=str(MAX_ROWS_PER_REQUEST),
        INFERPOOL_MAX_ROWS_PER_JOB=str(MAX_ROWS_PER_JOB),
        INFERPOOL_MAX_WORK_MS=str(MAX_WORK_MS),
        INFERPOOL_RESULT_TTL_S=str(RESULT_TTL_S),
    )
    stack.url = shared_url  # start_api records the newest API; other tests keep using the shared one
    proc = stack.procs[-1]
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c
    proc.stop()


def assert_error(r: httpx.Response, status: int, field: str | None = None, says: str | None = None) -> dict:
    assert r.status_code == status, f"{r.status_code} {r.text[:300]}"
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert set(body) >= {"type", "title", "status", "detail", "instance"} and body["status"] == status, body
    if field is not None:
        assert body.get("field") == field, body
    if says is not None:
        assert says.lower() in body["detail"].lower(), body
    return body


def assert_still_serving(c: httpx.Client) -> None:
    r = c.post("/v1/predict", json={"instances": [ROW]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def raw_json(body: str) -> dict:
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


def npy(X: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=True)
    return {"content": buf.getvalue(), "headers": {"content-type": "application/x-npy"}}


def csv_body(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "text/csv"}}


# (route, request kwargs, status, field, words in the message)
CASES = {
    # --- /v1/predict (pydantic body) ---
    "predict-wrong-width": ("/v1/predict", {"json": {"instances": [[0.5] * 19]}}, 422, "instances", "20 features"),
    "predict-string": ("/v1/predict", {"json": {"instances": [ROW[:-1] + ["abc"]]}}, 422, "instances.0.19", None),
    "predict-numeral-string": ("/v1/predict", {"json": {"instances": [[*ROW[:-1], "1.5"]]}}, 422, "instances.0.19", None),
    "predict-bool": ("/v1/predict", {"json": {"instances": [[*ROW[:-1], True]]}}, 422, "instances.0.19", None),
    "predict-NaN": ("/v1/predict", raw_json(f'{{"instances": [[NaN,{ROW_JSON}]]}}'), 422, "instances.0.0", "finite"),
    "predict-Infinity": ("/v1/predict", raw_json(f'{{"instances": [[{ROW_JSON},Infinity]]}}'), 422, "instances.0.19", "finite"),
    "predict--Infinity": ("/v1/predict", raw_json(f'{{"instances": [[-Infinity,{ROW_JSON}]]}}'), 422, "instances.0.0", "finite"),
    "predict-float32-overflow": ("/v1/predict", {"json": {"instances": [[1e39, *ROW[1:]]]}}, 422, "instances.0.0", "float32"),
    "predict-empty": ("/v1/predict", {"json": {"instances": []}}, 422, "instances", None),
    "predict-empty-row": ("/v1/predict", {"json": {"instances": [[]]}}, 422, "instances", "20 features"),
    "predict-ragged": ("/v1/predict", {"json": {"instances": [ROW, ROW[:5]]}}, 422, "instances", "same number"),
    "predict-too-many-rows": ("/v1/predict", {"json": {"instances": [ROW] * (MAX_ROWS_PER_REQUEST + 1)}}, 422, "instances", f"at most {MAX_ROWS_PER_REQUEST}"),
    "predict-missing-field": ("/v1/predict", {"json": {"rows": [ROW]}}, 422, None, None),
    "predict-unknown-field": ("/v1/predict", {"json": {"instances": [ROW], "extra": 1}}, 422, "extra", None),
    "predict-work-negative": ("/v1/predict", {"json": {"instances": [ROW], "work_ms": -1}}, 422, "work_ms", None),
    "predict-work-too-large": ("/v1/predict", {"json": {"instances": [ROW], "work_ms": MAX_WORK_MS + 1}}, 422, "work_ms", f"at most {MAX_WORK_MS}"),
    "predict-work-float": ("/v1/predict", {"json": {"instances": [ROW], "work_ms": 1.5}}, 422, "work_ms", None),
    "predict-malformed": ("/v1/predict", raw_json('{"instances": [[0.5,'), 400, "body", "not valid JSON"),
    "predict-not-an-object": ("/v1/predict", {"json": [ROW]}, 422, None, None),
    "predict-text-plain": ("/v1/predict", {"content": b'{"instances": [[0.5]]}', "headers": {"content-type": "text/plain"}}, 415, "content-type", "application/json"),
    "predict-form": ("/v1/predict", {"data": {"instances": "1"}}, 415, "content-type", None),
    # --- /predict (the single-process server's body) ---
    "compat-wrong-width": ("/predict", {"json": {"X": [0.5] * 3}}, 422, "X", "20 features"),
    "compat-NaN": ("/predict", raw_json(f'{{"X": [{ROW_JSON},NaN]}}'), 422, "X.19", "finite"),
    "compat-overflow": ("/predict", {"json": {"X": [*ROW[:-1], -1e300]}}, 422, "X.19", "float32"),
    "compat-malformed": ("/predict", raw_json("{"), 400, "body", None),
    "compat-content-type": ("/predict", {"content": b"0.5", "headers": {"content-type": "text/csv"}}, 415, "content-type", None),
    "compat-work-too-large": ("/predict", {"json": {"X": ROW, "work": 10**6}}, 422, "work_ms", None),
    # --- /v1/jobs, JSON ---
    "jobs-wrong-width": ("/v1/jobs", {"json": {"instances": [[0.5] * 21]}}, 422, "instances", "20 features"),
    "jobs-string-later-row": ("/v1/jobs", {"json": {"instances": [ROW, [*ROW[:5], "x", *ROW[6:]]]}}, 422, "instances.1.5", "number"),
    "jobs-numeral-later-row": ("/v1/jobs", {"json": {"instances": [ROW, [*ROW[:-1], "1.5"]]}}, 422, "instances.1.19", "number"),
    "jobs-bool-later-row": ("/v1/jobs", {"json": {"instances": [ROW, ROW, [True, *ROW[1:]]]}}, 422, "instances.2.0", "number"),
    "jobs-null": ("/v1/jobs", {"json": {"instances": [ROW, [None, *ROW[1:]]]}}, 422, "instances.1.0", "number"),
    "jobs-nested": ("/v1/jobs", {"json": {"instances": [[[0.5]] * N_FEATURES]}}, 422, "instances.0.0", "number"),
    "jobs-flat": ("/v1/jobs", {"json": {"instances": ROW}}, 422, "instances.0", None),
    "jobs-NaN": ("/v1/jobs", raw_json(f'{{"instances": [[0.5,{ROW_JSON}],[{ROW_JSON},NaN]]}}'), 422, "instances.1.19", "finite"),
    "jobs-Infinity": ("/v1/jobs", raw_json(f'{{"instances": [[Infinity,{ROW_JSON}]]}}'), 422, "instances.0.0", "finite"),
    "jobs-float32-overflow": ("/v1/jobs", {"json": {"instances": [ROW, [*ROW[:3], 3.5e38, *ROW[4:]]]}}, 422, "instances.1.3", "float32"),
    "jobs-huge-integer": ("/v1/jobs", raw_json(f'{{"instances": [[1{"0" * 400},{ROW_JSON}]]}}'), 422, "instances.0.0", "float32"),
    "jobs-empty": ("/v1/jobs", {"json": {"instances": []}}, 422, "instances", "non-empty"),
    "jobs-empty-row": ("/v1/jobs", {"json": {"instances": [[]]}}, 422, "instances", "20 features"),
    "jobs-missing-instances": ("/v1/jobs", {"json": {"work_ms": 0}}, 422, "instances", "required"),
    "jobs-unknown-field": ("/v1/jobs", {"json": {"instances": [ROW], "colour": "red"}}, 422, "colour", "unknown"),
    "jobs-too-many-rows": ("/v1/jobs", {"json": {"instances": [ROW] * (MAX_ROWS_PER_JOB + 1)}}, 422, "instances", f"at most {MAX_ROWS_PER_JOB}"),
    "jobs-work-negative": ("/v1/jobs", {"json": {"instances": [ROW], "work_ms": -5}}, 422, "work_ms", "non-negative"),
    "jobs-work-too-large": ("/v1/jobs", {"json": {"instances": [ROW], "work_ms": MAX_WORK_MS + 1}}, 422, "work_ms", f"at most {MAX_WORK_MS}"),
    "jobs-work-query-negative": ("/v1/jobs?work_ms=-1", csv_body(ROW_JSON + ",0.5"), 422, "work_ms", None),
    "jobs-work-query-too-large": (f"/v1/jobs?work_ms={MAX_WORK_MS + 1}", csv_body(ROW_JSON + ",0.5"), 422, "work_ms", None),
    # A valid row, then the body ends (a first row of the wrong width would be refused for that first: 422).
    "jobs-malformed": ("/v1/jobs", raw_json(f'{{"instances": [[0.5,{ROW_JSON}]'), 400, "body", "not valid JSON"),
    "jobs-not-utf8-json": ("/v1/jobs", {"content": b'{"instances": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400, "body", None),
    "jobs-deeply-nested": ("/v1/jobs", raw_json("[" * 5000 + "]" * 5000), 400, "body", None),
    "jobs-text-plain": ("/v1/jobs", {"content": b"0.5", "headers": {"content-type": "text/plain"}}, 415, "content-type", None),
    # --- /v1/jobs, CSV ---
    "csv-nan": ("/v1/jobs", csv_body(f"{ROW_JSON},0.5\n{ROW_JSON},nan\n"), 422, "instances.1.19", "finite"),
    "csv-inf": ("/v1/jobs", csv_body(f"inf,{ROW_JSON}\n"), 422, "instances.0.0", "finite"),
    "csv-word-in-data": ("/v1/jobs", csv_body(f"{ROW_JSON},0.5\n{ROW_JSON},abc\n"), 422, "row 2, column 20", "not a number"),
    "csv-typo-in-first-row": ("/v1/jobs", csv_body(f"0.5,0.5x,{','.join(['0.5'] * 18)}\n{ROW_JSON},0.5\n"), 422, "row 1, column 2", "not a number"),
    "csv-ragged": ("/v1/jobs", csv_body(f"{ROW_JSON},0.5\n0.5,0.5\n"), 422, "row 2", "columns"),
    "csv-wrong-width": ("/v1/jobs", csv_body("0.1,0.2,0.3\n"), 422, "instances", "20 features"),
    "csv-header-only": ("/v1/jobs", csv_body(",".join(f"f{i}" for i in range(N_FEATURES)) + "\n"), 422, "body", "no rows"),
    "csv-not-utf8": ("/v1/jobs", {"content": b"\xff\xfe\x00\x01", "headers": {"content-type": "text/csv"}}, 400, "body", "UTF-8"),
    # --- /v1/jobs, .npy ---
    "npy-nan": ("/v1/jobs", npy(np.array([ROW, [np.nan, *ROW[1:]]])), 422, "instances.1.0", "finite"),
    "npy-1d": ("/v1/jobs", npy(np.array(ROW)), 422, "instances", "rows"),
    "npy-3d": ("/v1/jobs", npy(np.zeros((2, 2, N_FEATURES))), 422, "instances", "rows"),
    "npy-strings": ("/v1/jobs", npy(np.array([["a"] * N_FEATURES])), 422, "body", "numeric"),
    "npy-pickled-objects": ("/v1/jobs", npy(np.array([[object()] * N_FEATURES])), 400, "body", None),
    "npy-garbage": ("/v1/jobs", {"content": b"\x93NUMPY garbage", "headers": {"content-type": "application/x-npy"}}, 400, "body", None),
    "npy-header-lies": ("/v1/jobs", {"content": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 20), }" + b" " * 45 + b"\n"), "headers": {"content-type": "application/x-npy"}}, 400, "body", None),
    # --- /v1/jobs, multipart ---
    "multipart-no-file": ("/v1/jobs", {"files": {"other": ("x.csv", b"0.5", "text/csv")}}, 422, "file", None),
    "multipart-unknown-type": ("/v1/jobs", {"files": {"file": ("x.bin", b"0.5", "application/pdf")}}, 415, "content-type", None),
    "multipart-csv-nan": ("/v1/jobs", {"files": {"file": ("x.csv", f"{ROW_JSON},NaN\n".encode(), "text/csv")}}, 422, "instances.0.19", "finite"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_clear_4xx_and_nothing_breaks(limited, name):
    route, kwargs, status, field, says = CASES[name]
    assert_error(limited.post(route, **kwargs), status, field, says)
    assert_still_serving(limited)


def test_npz_archive_is_refused(limited):
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((1, N_FEATURES)))
    r = limited.post("/v1/jobs", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert_error(r, 400, "body", "npz")


def rows_body(min_bytes: int) -> bytes:
    """Valid rows (long numbers: few enough rows to stay under the row limit) past ``min_bytes``."""
    row = b"[" + b",".join([b"0.123456789012345"] * N_FEATURES) + b"]"
    return b'{"instances": [' + b",".join([row] * (min_bytes // len(row) + 2)) + b"]}"


def chunked(body: bytes) -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
    for i in range(0, len(body), 16 * 1024):
        yield body[i : i + 16 * 1024]


def test_body_over_the_limit_is_413_declared_or_streamed(limited):
    """Each route has its limit: the one-call routes kilobytes, jobs megabytes."""
    json_type = {"content-type": "application/json"}
    for route, limit in (("/v1/predict", MAX_CALL_BODY_BYTES), ("/v1/jobs", MAX_BODY_BYTES),
                         ("/predict", MAX_CALL_BODY_BYTES), ("/v1/feedback", MAX_CALL_BODY_BYTES)):  # fmt: skip
        big = rows_body(limit)
        assert_error(limited.post(route, content=big, headers=json_type), 413, says=f"over {limit} bytes")
        assert_error(limited.post(route, content=chunked(big), headers=json_type), 413)
    # Under the jobs' limit but over the one-call routes' one.
    assert_error(limited.post("/v1/predict", content=rows_body(MAX_BODY_BYTES // 2), headers=json_type), 413)
    files = {"file": ("big.csv", rows_body(MAX_BODY_BYTES), "text/csv")}
    assert_error(limited.post("/v1/jobs", files=files), 413)
    assert_still_serving(limited)


def test_unknown_job_ids_are_404(limited):
    for job_id in ("0" * 40, "not-a-job", "abc.def.ghi", "deadbeef.0.1", "x" * 300, "%00", "a.b"):
        assert_error(limited.get(f"/v1/jobs/{job_id}"), 404)
    assert_still_serving(limited)


def test_results_expire_after_the_configured_ttl(limited, reference_model):
    X = np.random.default_rng(3).normal(size=(10, N_FEATURES))
    job_id = limited.post("/v1/jobs", json={"instances": X.tolist()}).json()["job_id"]
    submitted = time.monotonic()
    view = limited.get(f"/v1/jobs/{job_id}").json()
    while view["status"] not in ("succeeded", "failed") and time.monotonic() - submitted < RESULT_TTL_S:
        time.sleep(0.05)
        view = limited.get(f"/v1/jobs/{job_id}").json()
    assert view["predictions"] == reference_model.predict(X).tolist()
    time.sleep(max(0.0, RESULT_TTL_S + 0.5 - (time.monotonic() - submitted)))
    assert_error(limited.get(f"/v1/jobs/{job_id}"), 404, says="expired")


def test_a_good_job_completes_after_all_the_bad_ones(limited, reference_model):
    X = np.random.default_rng(4).normal(size=(MAX_ROWS_PER_JOB, N_FEATURES)).astype(np.float32)
    r = limited.post("/v1/jobs", **npy(X))  # the most rows allowed, as float32 .npy to fit the body limit
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + RESULT_TTL_S
    while time.monotonic() < deadline:
        view = limited.get(r.json()["status_url"]).json()
        if view["status"] == "succeeded":
            assert view["predictions"] == reference_model.predict(X).tolist()
            return
        time.sleep(0.05)
    pytest.fail(f"job did not finish: {view}")
