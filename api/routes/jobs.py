"""Submit-and-poll jobs: ``POST /v1/jobs`` (JSON, CSV or .npy) and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from fastapi import APIRouter, Depends, Query, Request

from api import intake
from api.intake.rows import RowSink
from api.jobs import JobStore
from api.responses import OrjsonResponse
from api.schemas import ErrorBody, JobAccepted, JobView
from api.security import api_key_header, caller
from api.state import JOB_QUEUES, ApiState
from inferpool import audit, keys, metrics
from inferpool.errors import InputError, Overloaded

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


def _state(request: Request) -> ApiState:
    return request.app.state.api


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
    """Accept a job of any size; chunks run in parallel on the workers. Poll the status URL.

    The body is read as it arrives and refused at its first bad row.
    """
    st = _state(request)
    s = st.settings
    plan = intake.plan_for(request, work_ms)  # 415 before a byte is read
    try:
        await st.admit(JOB_QUEUES, s.job_max_wait_s)
    except Overloaded:
        metrics.REQUESTS_SHED.labels(route="/v1/jobs", reason="wait").inc()
        raise
    m = st.manifest()
    job_id = JobStore.new_id()
    sink = RowSink(m.n_features, s.max_rows_per_job, s.job_chunk_rows)
    staged = 0

    async def stage(k: int, rows: np.ndarray) -> None:
        nonlocal staged
        await st.jobs.stage(job_id, k, rows)
        staged = k + 1

    try:
        received = await intake.receive(request, plan, sink, stage)
        work = plan.query_work_ms if plan.query_work_ms is not None else (received.work_ms or 0)
        if work > s.max_work_ms:
            raise InputError("work_ms", f"at most {s.max_work_ms} ms")
        existing = await _idempotent(request, st, key_id, job_id)
    except BaseException:
        with contextlib.suppress(Exception):
            await st.jobs.discard(job_id, staged)
        raise
    if existing is not None:
        await st.jobs.discard(job_id, staged)
        return existing
    await st.jobs.commit(job_id, received.n_rows, received.n_chunks, work, m.version, key_id)
    metrics.JOBS_ACCEPTED.labels(route="/v1/jobs").inc()
    try:
        await audit.record(st.redis, job_id, key_id, m.version, received.n_rows, s.audit_ttl_s)
    except Exception as exc:
        # The job is accepted and will run: answering 503 now would have the client submit it twice.
        logger.error("audit record of job %s not written: %s", job_id, type(exc).__name__)
    return _accepted(job_id, "queued", received.n_rows, 202)


async def _idempotent(request: Request, st: ApiState, key_id: str, job_id: str) -> OrjsonResponse | None:
    """The answer for an Idempotency-Key already used (its job), or None to go on with this job."""
    idem = request.headers.get("idempotency-key")
    if not idem:
        return None
    if len(idem) > 200:
        raise InputError("Idempotency-Key", "at most 200 characters")
    idem_key = keys.idempotency(key_id, idem)
    ttl = st.settings.result_ttl_s
    if await st.redis.set(idem_key, job_id, nx=True, ex=ttl):
        return None
    existing = (await st.redis.get(idem_key) or b"").decode()
    # The same key returns the same job; one whose first submit failed part way is finished now.
    if existing and await st.jobs.resume(existing):
        view = await st.jobs.get(existing, with_predictions=False)
        return _accepted(existing, view.status.value, view.progress.rows_total, 200)
    await st.redis.set(idem_key, job_id, ex=ttl)  # nothing was stored under it: take it over
    return None


def _accepted(job_id: str, status: str, rows: int, code: int) -> OrjsonResponse:
    url = f"/v1/jobs/{job_id}"
    body = {"job_id": job_id, "status": status, "status_url": url, "rows": rows}
    return OrjsonResponse(body, status_code=code, headers={"Location": url})


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}})
async def get_job(request: Request, job_id: str, key_id: str = Depends(caller)) -> OrjsonResponse:
    """Status, progress, timings and, once succeeded, the predictions in input order (for the submitting key)."""
    view = await _state(request).jobs.get(job_id, key_id=key_id)
    return OrjsonResponse(view.model_dump())
