"""Submit-and-poll jobs: ``POST /v1/jobs`` (JSON, CSV or .npy) and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from fastapi import APIRouter, Depends, Query, Request

from api import intake
from api.errors import Conflict
from api.idempotency import Claim, ClaimState
from api.intake.rows import RowSink
from api.jobs import JobStore
from api.openapi import IDEMPOTENCY_KEY, LOCATION, problems
from api.responses import OrjsonResponse
from api.schemas import JobAccepted, JobView
from api.security import api_key_header, caller
from api.state import JOB_QUEUES, ApiState
from inferpool import audit, metrics
from inferpool.errors import InputError, Overloaded
from inferpool.records import JobStatus

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=[Depends(api_key_header)])

JOB_BODY = {
    "parameters": [IDEMPOTENCY_KEY],
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
    responses={
        200: {"model": JobAccepted, "description": "The job already accepted under this Idempotency-Key.",
              "headers": LOCATION},
        202: {"description": "Accepted: every row stored and every task queued.", "headers": LOCATION},
        **problems(400, 401, 409, 413, 415, 422, 429, 503),
    },
)  # fmt: skip
async def submit(
    request: Request,
    work_ms: int | None = Query(None, ge=0, description="Simulated work per chunk, for CSV/.npy bodies."),
    key_id: str = Depends(caller),
) -> OrjsonResponse:
    """Accept a job of any size; chunks run in parallel on the workers. Poll the status URL.

    The body is read as it arrives and refused at its first bad row; with an ``Idempotency-Key``, one job
    per key: a retry gets the same job (200), another body under the key 422, a request made while the
    first is still being accepted 409.
    """
    st = _state(request)
    plan = intake.plan_for(request, work_ms)  # 415 before a byte is read
    idem = request.headers.get("idempotency-key")
    claim = await _claim(st, key_id, idem) if idem else None  # an empty key is no key
    if claim is not None and claim.state is ClaimState.DONE:
        return await _replay(request, st, plan, claim)
    try:
        async with st.claims.held(claim) if claim is not None else contextlib.nullcontext():
            return await _accept(request, st, plan, key_id, claim)
    finally:
        if claim is not None and claim.state is ClaimState.NEW:  # no job recorded under the key: free it
            with contextlib.suppress(Exception):
                await st.claims.release(claim)


async def _claim(st: ApiState, key_id: str, idem: str) -> Claim:
    claim = await st.claims.take(key_id, idem, JobStore.new_id())
    if claim.state is ClaimState.DONE and not await st.jobs.exists(claim.job_id):
        await st.claims.release(claim)  # its job expired: the key starts afresh
        claim = await st.claims.take(key_id, idem, JobStore.new_id())
    if claim.state is ClaimState.PENDING:
        raise Conflict("a request with this Idempotency-Key is still being accepted; retry in a moment")
    return claim


async def _replay(request: Request, st: ApiState, plan: intake.Plan, claim: Claim) -> OrjsonResponse:
    """A request with the key of an accepted job: the same body gets the job, another body a 422."""
    received = await intake.receive(request, plan, sink=None, store=None)  # hashed, not parsed
    if claim.digest is not None and received.digest != claim.digest:
        raise InputError("Idempotency-Key", "already used for a job with another body")
    await st.jobs.resume(claim.job_id)  # finishes a submit that failed after storing its job
    view = (await st.jobs.get(claim.job_id, with_predictions=False)).view
    return _accepted(claim.job_id, view.status.value, view.progress.rows_total, 200)


async def _accept(
    request: Request, st: ApiState, plan: intake.Plan, key_id: str, claim: Claim | None
) -> OrjsonResponse:
    s = st.settings
    # Its declared size is what is known of a job before its rows are parsed: counted against Redis's memory
    # share, so that a big job is refused before it fills Redis, not after (float32 rows take about as much).
    declared = request.headers.get("content-length", "")
    try:
        await st.admit(JOB_QUEUES, s.job_max_wait_s, incoming_bytes=int(declared) if declared.isdigit() else 0)
    except Overloaded:
        metrics.REQUESTS_SHED.labels(route="/v1/jobs", reason="wait").inc()
        raise
    await st.quotas.charge(key_id, rows=0, work_ms=0)  # a key in debt is refused before its body is read
    m = st.manifest()
    version, _ = await st.rollout.route(request.headers.get(s.rollout_key_header) or key_id, m.version)
    job_id = claim.job_id if claim is not None else JobStore.new_id()
    sink = RowSink(m.n_features, s.max_rows_per_job, s.job_chunk_rows)
    staged = 0

    async def stage(k: int, rows: np.ndarray) -> None:
        nonlocal staged
        await st.jobs.stage(job_id, k, rows)
        staged = max(staged, k + 1)  # two may be on their way at once (api.intake.STORES_IN_FLIGHT)

    try:
        received = await intake.receive(request, plan, sink, stage)
        work = plan.query_work_ms if plan.query_work_ms is not None else (received.work_ms or 0)
        if work > s.max_work_ms:
            raise InputError("work_ms", f"at most {s.max_work_ms} ms")
        await st.quotas.charge(key_id, rows=received.n_rows, work_ms=work * received.n_chunks)
    except BaseException:
        with contextlib.suppress(Exception):
            await st.jobs.discard(job_id, staged)
        raise
    try:
        await st.jobs.commit(job_id, received.n_rows, received.n_chunks, work, version, key_id)
    finally:
        # Stored, even if not yet accepted (Redis failed part way): a retry with the key finishes it.
        if claim is not None:
            await st.claims.done(claim, received.digest)
    metrics.JOBS_ACCEPTED.labels(route="/v1/jobs").inc()
    try:
        await audit.record(st.redis, job_id, key_id, version, received.n_rows, s.audit_ttl_s)
    except Exception as exc:
        # The job is accepted and will run: answering 503 now would have the client submit it twice.
        logger.error("audit record of job %s not written: %s", job_id, type(exc).__name__)
    return _accepted(job_id, JobStatus.queued.value, received.n_rows, 202)


def _accepted(job_id: str, status: str, rows: int, code: int) -> OrjsonResponse:
    url = f"/v1/jobs/{job_id}"
    body = {"job_id": job_id, "status": status, "status_url": url, "rows": rows}
    return OrjsonResponse(body, status_code=code, headers={"Location": url})


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses=problems(401, 404, 503))
async def get_job(request: Request, job_id: str, key_id: str = Depends(caller)) -> OrjsonResponse:
    """Status, progress, timings and, once succeeded, the predictions in input order (for the submitting key)."""
    answer = await _state(request).jobs.get(job_id, key_id=key_id)
    return OrjsonResponse(answer.body())
