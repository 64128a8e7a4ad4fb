"""Submit-and-poll jobs: ``POST /v1/jobs`` (JSON, CSV or .npy) and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile

from api import inputs
from api.responses import OrjsonResponse
from api.schemas import ErrorBody, JobAccepted, JobView
from api.security import api_key_header, caller
from api.state import JOB_QUEUES, ApiState
from inferpool import audit, keys, metrics
from inferpool.errors import InputError, Overloaded, UnsupportedMediaType

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=[Depends(api_key_header)])

JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "additionalProperties": False,
                    "properties": {
                        "instances": {
                            "type": "array", "minItems": 1,
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                        "work_ms": {"type": "integer", "minimum": 0, "default": 0},
                    },
                }
            },
            "text/csv": {"schema": {"type": "string"}},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}  # fmt: skip

# Bodies above this are parsed on a thread so the event loop keeps serving.
PARSE_INLINE_MAX_BYTES = 64 * 1024


def _state(request: Request) -> ApiState:
    return request.app.state.api


async def _run(fn, body: bytes):
    return fn(body) if len(body) <= PARSE_INLINE_MAX_BYTES else await asyncio.to_thread(fn, body)


async def _read_rows(request: Request, work_ms_q: int | None) -> tuple[np.ndarray, int]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("file", "multipart upload needs a 'file' part (.csv, .npy or .json)")
        body = await upload.read()
        name = (upload.filename or "").lower()
        ctype = {"csv": "text/csv", "npy": "application/x-npy", "json": "application/json"}.get(
            name.rsplit(".", 1)[-1], upload.content_type or ""
        )
    else:
        body = await request.body()
    if ctype in ("application/json", ""):
        X, work_ms = await _run(inputs.parse_json_job, body)
        return X, work_ms if work_ms_q is None else work_ms_q
    if ctype in ("text/csv", "application/csv"):
        return await _run(inputs.parse_csv, body), work_ms_q or 0
    if ctype in ("application/x-npy", "application/octet-stream"):
        return await _run(inputs.parse_npy, body), work_ms_q or 0
    raise _Unsupported(ctype)


class _Unsupported(Exception):
    def __init__(self, ctype: str) -> None:
        self.ctype = ctype


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra=JOB_BODY,
    responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 413: {"model": ErrorBody},
               415: {"model": ErrorBody}, 422: {"model": ErrorBody}, 429: {"model": ErrorBody},
               503: {"model": ErrorBody}},
)  # fmt: skip
async def submit(
    request: Request,
    work_ms: int | None = Query(None, ge=0, description="Simulated work per chunk, for CSV/.npy bodies."),
    key_id: str = Depends(caller),
) -> OrjsonResponse:
    """Accept a job of any size; chunks run in parallel on the workers. Poll the status URL."""
    st = _state(request)
    s = st.settings
    try:
        X, work = await _read_rows(request, work_ms)
    except _Unsupported as exc:
        msg = f"{exc.ctype!r} is not accepted here: send JSON, CSV or .npy"
        raise UnsupportedMediaType("content-type", msg) from None
    m = st.manifest()
    inputs.check_rows(X, m.n_features, s.max_rows_per_job, "instances")
    if work > s.max_work_ms:
        raise InputError("work_ms", f"at most {s.max_work_ms} ms")
    try:
        await st.admit(JOB_QUEUES, s.job_max_wait_s)
    except Overloaded:
        metrics.REQUESTS_SHED.labels(route="/v1/jobs", reason="wait").inc()
        raise
    job_id = st.jobs.new_id()
    idem = request.headers.get("idempotency-key")
    if idem:
        if len(idem) > 200:
            raise InputError("Idempotency-Key", "at most 200 characters")
        idem_key = keys.idempotency(key_id, idem)
        if not await st.redis.set(idem_key, job_id, nx=True, ex=s.result_ttl_s):
            existing = (await st.redis.get(idem_key) or b"").decode()
            # The same key returns the same job; one whose first submit failed part way is finished now.
            if existing and await st.jobs.resume(existing):
                view = await st.jobs.get(existing, with_predictions=False)
                return _accepted(existing, view.status.value, view.progress.rows_total, 200)
            await st.redis.set(idem_key, job_id, ex=s.result_ttl_s)  # nothing was stored under it: take it over
    await st.jobs.create(job_id, X, work, m.version, key_id)
    metrics.JOBS_ACCEPTED.labels(route="/v1/jobs").inc()
    try:
        await audit.record(st.redis, job_id, key_id, m.version, X.shape[0], s.audit_ttl_s)
    except Exception as exc:
        # The job is accepted and will run: answering 503 now would have the client submit it twice.
        logger.error("audit record of job %s not written: %s", job_id, type(exc).__name__)
    return _accepted(job_id, "queued", X.shape[0], 202)


def _accepted(job_id: str, status: str, rows: int, code: int) -> OrjsonResponse:
    url = f"/v1/jobs/{job_id}"
    body = {"job_id": job_id, "status": status, "status_url": url, "rows": rows}
    return OrjsonResponse(body, status_code=code, headers={"Location": url})


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}})
async def get_job(request: Request, job_id: str, key_id: str = Depends(caller)) -> OrjsonResponse:
    """Status, progress, timings and, once succeeded, the predictions in input order (for the submitting key)."""
    view = await _state(request).jobs.get(job_id, key_id=key_id)
    return OrjsonResponse(view.model_dump())
