"""One-call prediction: ``POST /v1/predict`` and the compatibility ``POST /predict``."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Depends, Request

from api.batcher import Entry
from api.inputs import check_values, require_json
from api.openapi import problems
from api.responses import OrjsonResponse
from api.schemas import CompatRequest, CompatResponse, PredictRequest, PredictResponse
from api.security import api_key_header, caller
from api.state import ApiState
from inferpool import keys, metrics
from inferpool.errors import InputError, Overloaded, PredictionFailed, ResultTimeout
from inferpool.model_store import Manifest

router = APIRouter(tags=["predict"], dependencies=[Depends(api_key_header)])

ERRORS = problems(400, 401, 413, 415, 422, 429, 503, 504)


def _state(request: Request) -> ApiState:
    return request.app.state.api


def _check(X: np.ndarray, m: Manifest, max_rows: int, field: str) -> None:
    if X.shape[1] != m.n_features:
        raise InputError(field, f"each row must have {m.n_features} features, got {X.shape[1]}")
    if X.shape[0] > max_rows:
        raise InputError(field, f"at most {max_rows} rows per request, got {X.shape[0]}; use /v1/jobs")


async def predict_rows(
    st: ApiState, X: np.ndarray, work_ms: int, route: str, key_id: str, routing_key: str | None = None
) -> tuple[np.ndarray, str, str]:
    """Validate, admit, send and wait for the answer (and for the request's simulated work, if any).

    The model version comes from the rollout plan (``api.rollout``), by ``routing_key`` (a request header)
    or else the caller's key id. Returns the caller's unsigned slice id (``task.offset.count``); a timeout
    carries it signed, to poll.
    """
    await st.quotas.charge_predict(key_id, X.shape[0], work_ms)  # per-key quota (api/quota.py)
    version, shadow = await st.rollout.route(routing_key or key_id, st.manifest().version)
    try:
        out = await _predict_rows(st, X, work_ms, route, version)
    except ResultTimeout as exc:
        raise ResultTimeout(await st.jobs.slice_id(exc.job_id, key_id), exc.timeout_s) from None
    if shadow and not work_ms and X.shape[0] <= st.settings.batch_max_rows:
        st.rollout.shadow(st.batcher, X, shadow, out[0], st.settings.predict_timeout_s)
    return out


async def _predict_rows(
    st: ApiState, X: np.ndarray, work_ms: int, route: str, version: str
) -> tuple[np.ndarray, str, str]:
    s = st.settings
    if work_ms > s.max_work_ms:
        raise InputError("work_ms", f"at most {s.max_work_ms} ms")
    # Light rows ride a micro-batch. A request carrying simulated work is one task on the work queue that
    # predicts its rows (microseconds, compiled) and then holds a work process for work_ms: one task for the
    # request instead of a work task plus a share of a batch, and no light request waits behind its work
    # (nor is it refused for a backlog of work: each request is admitted by the queue it goes to).
    queue = keys.QUEUE_WORK if work_ms else keys.QUEUE_ONLINE
    try:
        await st.admit((queue,), s.predict_max_wait_s)
    except Overloaded as exc:
        metrics.REQUESTS_SHED.labels(route=route, reason="wait").inc()
        raise exc
    metrics.JOBS_ACCEPTED.labels(route=route).inc()
    if work_ms or X.shape[0] > s.batch_max_rows:
        return await _own_task(st, X, work_ms, queue, version)
    return await _batched(st, st.batcher.submit(X, version))


async def _own_task(st: ApiState, X: np.ndarray, work_ms: int, queue: str, version: str) -> tuple[np.ndarray, str, str]:
    task_id, fut = await st.dispatcher.publish_rows(X, work_ms, queue, reqs=1, model_version=version)
    # Its simulated work counts against the timeout too: a caller waits for the whole answer.
    try:
        async with asyncio.timeout(st.settings.predict_timeout_s):
            reply = await fut
    except TimeoutError:
        st.dispatcher.forget(task_id)
        st.rollout.observe(version, 1, None, True)
        raise ResultTimeout(f"{task_id}.0.{X.shape[0]}", st.settings.predict_timeout_s) from None
    failed = reply.predictions is None or reply.model_version != version
    st.rollout.observe(version, 1, reply, failed, timed=not work_ms)
    if reply.predictions is None:
        raise PredictionFailed(f"model version {version}: {reply.error or 'failed'}")
    if reply.model_version != version:
        raise PredictionFailed(f"answered by model version {reply.model_version}, routed to {version}")
    return reply.predictions, f"{task_id}.0.{X.shape[0]}", reply.model_version


async def _batched(st: ApiState, entry: Entry) -> tuple[np.ndarray, str, str]:
    try:
        # The entry's future is this caller's alone: cancelling it on timeout harms no one (the batch skips it).
        async with asyncio.timeout(st.settings.predict_timeout_s):
            answer = await entry.future
    except TimeoutError:
        if entry.job_id is None:
            raise Overloaded("the request could not be sent in time", retry_after_s=1) from None
        raise ResultTimeout(entry.job_id, st.settings.predict_timeout_s) from None
    return answer.predictions, answer.job_id, answer.model_version


async def predict_answer(st: ApiState, instances: list, work_ms: int, key_id: str, routing_key: str | None) -> dict:
    """``POST /v1/predict``'s answer to a validated body (the route and ``api.fast_path`` share it)."""
    m = st.manifest()
    widths = {len(r) for r in instances}
    if len(widths) != 1:
        raise InputError("instances", "every row must have the same number of features")
    X = np.asarray(instances, dtype=np.float64)
    _check(X, m, st.settings.max_rows_per_request, "instances")
    check_values(X, "instances")
    preds, raw_id, version = await predict_rows(st, X, work_ms, "/v1/predict", key_id, routing_key)
    job_id = await st.jobs.slice_id(raw_id, key_id)  # only this route hands out the id: only it signs
    return {"predictions": preds.tolist(), "job_id": job_id, "model_version": version}


async def compat_answer(st: ApiState, x: list, work: int, key_id: str, routing_key: str | None) -> dict:
    """``POST /predict``'s answer to a validated body (the route and ``api.fast_path`` share it)."""
    X = np.asarray([x], dtype=np.float64)
    _check(X, st.manifest(), 1, "X")
    check_values(X, "X", flat=True)
    preds, _, version = await predict_rows(st, X, work, "/predict", key_id, routing_key)
    return {"prediction": int(preds[0]), "model_version": version}


@router.post("/v1/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    body: PredictRequest, request: Request, key_id: str = Depends(caller), __: None = Depends(require_json)
) -> OrjsonResponse:
    """Predict and wait for the answer in the same call (up to the configured timeout)."""
    st = _state(request)
    routing_key = request.headers.get(st.settings.rollout_key_header)
    return OrjsonResponse(await predict_answer(st, body.instances, body.work_ms, key_id, routing_key))


@router.post("/predict", response_model=CompatResponse, responses=ERRORS)
async def predict_compat(
    body: CompatRequest, request: Request, key_id: str = Depends(caller), __: None = Depends(require_json)
) -> OrjsonResponse:
    """Drop-in for the single-process server: ``{"X": [...], "work": ms}`` -> ``{"prediction": int}``, plus
    the ``model_version`` that answered (a rollout may route the caller to a candidate)."""
    st = _state(request)
    routing_key = request.headers.get(st.settings.rollout_key_header)
    return OrjsonResponse(await compat_answer(st, body.X, body.work, key_id, routing_key))
