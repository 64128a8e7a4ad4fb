"""Health, readiness, model manifest, monitoring views, feedback, and admin routes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query, Request

from api.inputs import require_json
from api.jobs import JobAnswer
from api.openapi import problems
from api.responses import OrjsonResponse
from api.schemas import (
    AccuracyResponse,
    AuditLog,
    DriftResponse,
    FeedbackAccepted,
    FeedbackRequest,
    Health,
    ModelManifest,
    Readiness,
    SystemStatus,
)
from api.security import admin, api_key_header, caller
from api.state import ApiState
from inferpool import audit, drift, feedback, status
from inferpool.drift import cache as drift_cache
from inferpool.errors import BrokerUnavailable, InputError, JobNotFound

router = APIRouter()


def _state(request: Request) -> ApiState:
    return request.app.state.api


@router.get("/healthz", tags=["ops"], response_model=Health)
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: checks says which check failed."}},
)
async def readyz(request: Request) -> OrjsonResponse:
    """Ready when Redis answers, a model exists and at least one live worker can serve (has loaded its model)."""
    st = _state(request)
    checks: dict[str, object] = {}
    try:
        await st.redis.ping()
        checks["redis"] = "ok"
        workers = await status.ready_workers(st.redis)
        checks["workers"] = len(workers)
    except Exception as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__})"
        checks["workers"] = 0
    try:
        checks["model"] = st.manifest().version
    except Exception:
        checks["model"] = None
    ready = checks["redis"] == "ok" and bool(checks["workers"]) and checks["model"] is not None
    return OrjsonResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/v1/models",
    tags=["ops"],
    response_model=ModelManifest,
    responses=problems(401, 503),
    dependencies=[Depends(api_key_header)],
)
async def models(request: Request, _: str = Depends(caller)) -> OrjsonResponse:
    """The manifest of the served model (version, sha256, features, classes, training summary), and the
    rollout: its plan, each version's share of answers and the last verdict (``rollout`` null without one)."""
    st = _state(request)
    plan = await st.rollout.plan()
    body = st.manifest().to_json()
    if plan is not None:
        shares = {plan.stable: 1.0 - plan.share, plan.candidate: plan.share} if plan.stable != plan.candidate else {}
        body["rollout"] = {**plan.to_json(), "shares": shares, "shadow_share": plan.shadow_share}
    else:
        body["rollout"] = None
    return OrjsonResponse(body)


@router.get(
    "/v1/monitoring/status",
    tags=["monitoring"],
    response_model=SystemStatus,
    responses=problems(401, 503),
    dependencies=[Depends(api_key_header)],
)
async def monitoring_status(request: Request, _: str = Depends(caller)) -> OrjsonResponse:
    """Queues, unacked messages, workers and pool size, and the scaler's recent decisions."""
    try:
        return OrjsonResponse(await status.collect(_state(request).redis))
    except Exception as exc:
        raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc


@router.get(
    "/v1/monitoring/drift",
    tags=["monitoring"],
    response_model=DriftResponse,
    responses=problems(401, 503),
    dependencies=[Depends(api_key_header)],
)
async def monitoring_drift(request: Request, _: str = Depends(caller)) -> OrjsonResponse:
    """Drift of recent inputs (sampled window), refusals and predicted classes against the training data.

    Features come most impact first (importance x drift), each with its importance beside its verdict;
    ``reasons`` says why the window is drifted. One evaluation is shared with the exporter for a few seconds.
    """
    st = _state(request)
    s = st.settings
    report = await drift_cache.areport(st.redis, st.manifest(), drift.policy_of(s), s.drift_cache_s)
    return OrjsonResponse(report.to_json())


@router.post(
    "/v1/feedback",
    tags=["monitoring"],
    response_model=FeedbackAccepted,
    responses=problems(400, 401, 413, 415, 422, 503),
    dependencies=[Depends(api_key_header)],
)
async def post_feedback(
    body: FeedbackRequest, request: Request, key_id: str = Depends(caller), __: None = Depends(require_json)
) -> OrjsonResponse:
    """True labels for earlier predictions, by job id and row: feeds realised accuracy and label delay."""
    st = _state(request)
    answers: dict[str, JobAnswer] = {}  # each job read once, however many of its rows are labelled
    entries: list[feedback.FeedbackEntry] = []
    now = time.time()
    for i, item in enumerate(body.labels):
        answer = answers.get(item.job_id)
        if answer is None:
            try:
                answer = answers[item.job_id] = await st.jobs.get(item.job_id, key_id=key_id)
            except JobNotFound as exc:
                raise InputError(f"labels.{i}.job_id", "unknown job, or its results expired") from exc
        view, preds = answer.view, answer.predictions
        if preds is None:
            raise InputError(f"labels.{i}.job_id", f"job is {view.status.value}, not succeeded")
        if item.row >= len(preds):
            raise InputError(f"labels.{i}.row", f"job has {len(preds)} rows")
        entries.append(
            feedback.FeedbackEntry(
                job_id=item.job_id, row=int(item.row), true_label=item.label,
                predicted_label=int(preds[item.row]), predicted_at=view.timings.finished or now,
                received_at=now,
            )
        )  # fmt: skip
    await feedback.record_entries(st.redis, entries)
    by_version: dict[str, tuple[int, int]] = {}  # the rollout's accuracy verdict: (labelled, correct) per version
    for item, e in zip(body.labels, entries, strict=True):
        version = answers[item.job_id].view.model_version or ""
        n, ok = by_version.get(version, (0, 0))
        by_version[version] = (n + 1, ok + int(e.true_label == e.predicted_label))
    await st.rollout.record_labels(by_version)
    return OrjsonResponse({"accepted": len(entries), "summary": await feedback.asummary(st.redis)})


@router.get(
    "/v1/monitoring/accuracy",
    tags=["monitoring"],
    response_model=AccuracyResponse,
    responses=problems(401, 503),
    dependencies=[Depends(api_key_header)],
)
async def accuracy(request: Request, _: str = Depends(caller)) -> OrjsonResponse:
    """Realised accuracy over the feedback window, label delay percentiles, and the concept-drift verdict
    (accuracy of the newest labels against the model's held-out score)."""
    st = _state(request)
    items = await feedback.aentries(st.redis)
    verdict = feedback.judge(items, st.manifest(), st.settings)
    return OrjsonResponse({**feedback.summarize(items), "concept": verdict.to_json()})


@router.get(
    "/v1/admin/audit",
    tags=["admin"],
    response_model=AuditLog,
    responses=problems(401, 422, 503),
    dependencies=[Depends(api_key_header)],
)
async def audit_log(
    request: Request,
    since: float = Query(0.0, description="Epoch seconds.", allow_inf_nan=False),
    until: float | None = Query(None, description="Epoch seconds; default now.", allow_inf_nan=False),
    limit: int = Query(100, ge=1, le=1000),
    _: str = Depends(admin),
) -> OrjsonResponse:
    """Audit records of submitted jobs (admin key required)."""
    rows = await audit.query(_state(request).redis, since, until or time.time(), limit)
    return OrjsonResponse({"records": rows})


@router.post(
    "/v1/admin/model/reload",
    tags=["admin"],
    response_model=ModelManifest,
    responses=problems(401, 503),
    dependencies=[Depends(api_key_header)],
)
async def reload_model(request: Request, _: str = Depends(admin)) -> OrjsonResponse:
    """Re-read the served model's manifest (after `inferpool train` or `inferpool register`)."""
    return OrjsonResponse(_state(request).reload_manifest().to_json())
