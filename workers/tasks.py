"""The predict task: one message, one model call, results written back idempotently.

A message carries either its rows inline (base64 float32, for micro-batches
and single requests) or a reference to a job chunk stored in Redis. Task
arguments never include rows in their repr, so Flower and the event stream
show sizes only (see ``inferpool.publish``).

At-least-once execution, exactly-once results: a redelivered task recomputes
the same predictions and overwrites the same keys; the first completion alone
moves the job's counters and the ledger (SET NX / SADD decide which is first),
later ones count as duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from inferpool import codec, keys, metrics
from inferpool.celery_config import soft_time_limit_s
from inferpool.drift import buffer as drift_buffer
from inferpool.publish import TASK_PREDICT, TASK_PREDICT_ONLINE
from inferpool.records import LedgerField, encode_failure, encode_reply, inflight_batch, inflight_job
from inferpool.scripts import FailJob, FinishChunk, FinishInline, StartChunk
from inferpool.settings import get_settings
from workers.app import app
from workers.delivery import OneEventRequest, ServingRequest, is_transient
from workers.runtime import Runtime, get_runtime
from workers.serving import CannotServe
from workers.specs import SpecRefused, check_spec
from workers.versions import cache as versions

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Long enough to ride out a Redis restart; never past the soft time limit (less a margin).
REDIS_PATIENCE_S = 3.0
REDIS_RETRY_PAUSE_S = 0.2
SOFT_LIMIT_MARGIN_S = 0.5


def _enqueued_at(request: Any) -> float | None:
    value = getattr(request, keys.ENQUEUED_HEADER, None)
    if value is None and request.headers:
        value = request.headers.get(keys.ENQUEUED_HEADER)
    return float(value) if value is not None else None


def _run(task: Any, spec: dict[str, Any]) -> None:
    try:
        check_spec(spec)
    except SpecRefused as exc:
        _refuse(task, exc)
        return
    try:
        _predict(task, spec)
    except Exception as exc:
        # Redis stayed away or kept refusing writes (OOM, READONLY...) past our patience, or time ran out
        # outside the model call (which marks its job failed itself): put the message back (or, Redis
        # refusing that too, leave it unacked until the visibility timeout: workers.delivery) rather than
        # ack a task whose results were never written.
        if not (is_transient(exc) or isinstance(exc, SoftTimeLimitExceeded)):
            raise
        raise Reject(f"results not written ({type(exc).__name__}: {exc})", requeue=True) from exc


def _refuse(task: Any, exc: SpecRefused) -> None:
    """Ack a message whose spec inferpool never wrote, having written nothing: counted, logged (not its spec)."""
    queue = (task.request.delivery_info or {}).get("routing_key") or ""
    metrics.TASKS_COMPLETED.labels(queue=queue, outcome="refused").inc()
    logger.error(
        "refused task %s from %s: its spec's %s", task.request.id, queue, exc,
        extra={"task_id": task.request.id, "queue": queue},
    )  # fmt: skip


@app.task(name=TASK_PREDICT, bind=True, ignore_result=True, send_events=False, Request=OneEventRequest)
def predict(self: Any, spec: dict[str, Any]) -> None:
    """Run the model on one message's rows; ``spec`` is built by ``api.dispatch`` or ``inferpool.publish``."""
    _run(self, spec)


# Micro-batches send no task events at all: see inferpool.publish for the figures behind that choice.
@app.task(name=TASK_PREDICT_ONLINE, bind=True, ignore_result=True, send_events=False, Request=ServingRequest)
def predict_online(self: Any, spec: dict[str, Any]) -> None:
    """``predict`` for micro-batches of the online queue."""
    _run(self, spec)


class _Scripts:
    """The finishing scripts, registered once per client: EVALSHA sends 40 bytes, not the script's text."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.finish_chunk = FinishChunk.register(client)
        self.finish_inline = FinishInline.register(client)
        self.start_chunk = StartChunk.register(client)
        self.fail_job = FailJob.register(client)


_scripts: _Scripts | None = None


def _scripts_of(rt: Runtime) -> _Scripts:
    global _scripts
    if _scripts is None or _scripts.client is not rt.redis:
        _scripts = _Scripts(rt.redis)
    return _scripts


def _predict(self: Any, spec: dict[str, Any]) -> None:
    patience = time.monotonic() + soft_time_limit_s(get_settings()) - SOFT_LIMIT_MARGIN_S
    queue = spec.get("queue", "")
    rt = _runtime_or_requeue()
    try:
        # Before the clock starts: loading a version on demand is waiting, not the model's run time (which the
        # rollout's p99 verdict compares).
        rt = versions.runtime_for(rt, spec.get("mv"))
    except Exception as exc:
        # The routed version cannot be loaded (retired, tampered with): the caller is told; no other version answers.
        metrics.TASKS_COMPLETED.labels(queue=queue, outcome="failure").inc()
        logger.error("model version %s unavailable for task %s: %s", spec.get("mv"), self.request.id, exc)
        _patiently(_report_failure, spec, rt, f"model version {spec.get('mv')} unavailable: {exc}", until=patience)
        return
    started = time.time()
    enqueued = _enqueued_at(self.request) or started
    s = get_settings()
    job_id = spec.get("job")
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    if redelivered:
        _count_redelivery(rt, queue)
    if not job_id and queue in keys.SHORT_QUEUES and spec.get("reqs") and started - enqueued > s.online_held_s / 2:
        _quietly(_mark_started, rt, spec["id"], started)
    if job_id:
        _patiently(
            _scripts_of(rt).start_chunk, [keys.job(job_id), keys.INFLIGHT], [started, inflight_job(job_id)],
            until=patience,
        )  # fmt: skip
    try:
        rows = _patiently(_load_rows, spec, rt, until=patience)
        # A message with no rows is the simulated-work half of a heavy request; its row rides a micro-batch.
        preds = rt.model.predict(rows) if len(rows) else np.empty(0, dtype=np.int64)
        if spec.get("work_ms"):
            # Simulated extra inference time: it occupies this process, as real compute would.
            time.sleep(spec["work_ms"] / 1000.0)
    except _ChunkDone:
        _quietly(rt.redis.hincrby, keys.LEDGER, LedgerField.duplicates, 1)
        metrics.DUPLICATES.inc()
        return
    except Exception as exc:
        if is_transient(exc):
            raise  # Redis's state, not the input's fault: never report the job failed for it
        metrics.TASKS_COMPLETED.labels(queue=queue, outcome="failure").inc()
        logger.exception(
            "predict failed id=%s job=%s", spec.get("id"), job_id,
            extra={"job_id": job_id, "task_id": self.request.id, "queue": queue},
        )  # fmt: skip
        _report_failure(spec, rt, f"{type(exc).__name__}: {exc}")
        return
    finished = time.time()
    wait_s, run_s = max(0.0, started - enqueued), finished - started
    if job_id:
        _patiently(_finish_chunk, spec, rt, preds, wait_s, run_s, finished, s.result_ttl_s, until=patience)
    else:
        _patiently(_finish_inline, spec, rt, preds, enqueued, started, finished, s.result_ttl_s, until=patience)
    metrics.observe_task(queue, rows.shape[0], wait_s, run_s, preds, rt.manifest.version)
    if len(rows):
        drift_buffer.record_later(rt.redis, rows, preds, s.drift_sample_rate, s.drift_window)
    level = logging.INFO if s.log_task_events else logging.DEBUG
    if logger.isEnabledFor(level):  # one check on the hot path when task events are off
        logger.log(
            level, "predict done id=%s job=%s rows=%d wait_s=%.4f run_s=%.4f model=%s",
            spec.get("id"), job_id, rows.shape[0], wait_s, run_s, rt.manifest.version,
            extra={
                "job_id": job_id, "task_id": self.request.id, "worker": self.request.hostname, "queue": queue,
                "rows": int(rows.shape[0]), "requests": spec.get("reqs", 1), "model_version": rt.manifest.version,
                "queue_wait_s": wait_s, "run_s": run_s, "redelivered": redelivered,
            },
        )  # fmt: skip


def _mark_started(rt: Runtime, task_id: str, started: float) -> None:
    """Progress for a batch that waited long enough for the short re-dispatch pass to look at it: its online
    worker keeps no unacked record, and a batch that is running must not look lost (workers.redispatch)."""
    rt.redis.zadd(keys.INFLIGHT, {inflight_batch(task_id): started}, xx=True)


def _runtime_or_requeue() -> Runtime:
    """This process's model, or its message goes back to the queue (and the worker stops consuming)."""
    try:
        return get_runtime()
    except Exception as exc:
        raise CannotServe(f"model unavailable: {type(exc).__name__}: {exc}") from exc


def _patiently(fn: Callable[..., T], *args: Any, until: float) -> T:
    """Call ``fn``, retrying through a Redis restart (a fraction of a second) or a refusal that passes (memory
    freed, failover done) for up to REDIS_PATIENCE_S, and not past ``until`` (monotonic clock)."""
    deadline = min(time.monotonic() + REDIS_PATIENCE_S, until)
    while True:
        try:
            return fn(*args)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(REDIS_RETRY_PAUSE_S)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Bookkeeping (a counter, a drift sample) that Redis may refuse for now: never worth the message."""
    try:
        fn(*args)
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.debug("skipped %s: %s", getattr(fn, "__name__", fn), exc)


def _count_redelivery(rt: Runtime, queue: str) -> None:
    # kombu flags a message it put back (visibility timeout passed, or its worker was lost).
    metrics.TASKS_REDELIVERED.labels(queue=queue).inc()
    _quietly(rt.redis.hincrby, keys.LEDGER, LedgerField.redelivered, 1)


class _ChunkDone(Exception):
    """A redelivered copy of a chunk whose first run finished and freed its rows: a duplicate."""


def _load_rows(spec: dict[str, Any], rt: Runtime) -> np.ndarray:
    n_features = rt.manifest.n_features
    if not spec.get("n"):
        return np.empty((0, n_features), dtype=codec.ROW_DTYPE)
    if "rows" in spec:
        return codec.rows_from_b64(spec["rows"], n_features)
    data = rt.redis.get(keys.job_input(spec["job"], spec["chunk"]))
    if data is None:
        if rt.redis.sismember(keys.job_done_chunks(spec["job"]), spec["chunk"]):
            raise _ChunkDone
        raise LookupError(f"input of job {spec['job']} chunk {spec['chunk']} has expired")
    return codec.rows_from_bytes(data, n_features)


def _samples_key(spec: dict) -> str:
    queue = spec.get("queue", "")
    return keys.task_samples(queue) if queue else ""


def _finish_chunk(
    spec: dict, rt: Runtime, preds: np.ndarray, wait_s: float, run_s: float, now: float, ttl: int
) -> None:
    job_id, chunk = spec["job"], spec["chunk"]
    done = _scripts_of(rt).finish_chunk(
        keys=[keys.job(job_id), keys.job_done_chunks(job_id), keys.LEDGER, keys.job_input(job_id, chunk),
              keys.INFLIGHT, keys.job_output(job_id, chunk), _samples_key(spec)],
        args=[chunk, len(preds), ttl, now, f"{wait_s:.4f}", f"{run_s:.4f}", inflight_job(job_id),
              codec.preds_to_bytes(preds), keys.TASK_SAMPLES_MAXLEN],
    )  # fmt: skip
    if done == -1:
        metrics.DUPLICATES.inc()
    metrics.TASKS_COMPLETED.labels(queue=spec.get("queue", ""), outcome="success").inc()


def _finish_inline(spec: dict, rt: Runtime, preds: np.ndarray, enq: float, start: float, end: float, ttl: int) -> None:
    payload = encode_reply(spec["id"], preds.tolist(), rt.manifest.version, enq, start, end)
    first = _scripts_of(rt).finish_inline(
        *_finish_inline_args(spec, payload, ttl, LedgerField.succeeded, start - enq, end - start)
    )
    if not first:
        metrics.DUPLICATES.inc()
    metrics.TASKS_COMPLETED.labels(queue=spec.get("queue", ""), outcome="success").inc()


def _finish_inline_args(
    spec: dict, payload: bytes, ttl: int, outcome: str, wait_s: float | None = None, run_s: float | None = None
) -> tuple[list, list]:
    """(keys, args) of the finishing script; a failure (no timings) adds no sample to the queue's stream."""
    task_id = spec["id"]
    samples = _samples_key(spec) if wait_s is not None else ""
    return (
        [keys.batch_result(task_id), keys.LEDGER, spec.get("reply") or "", keys.batch_pending(task_id),
         keys.batch_spec(task_id), keys.INFLIGHT, samples],
        [payload, ttl, spec.get("reqs", 1), outcome, inflight_batch(task_id),
         f"{max(0.0, wait_s or 0.0):.4f}", f"{run_s or 0.0:.4f}", keys.TASK_SAMPLES_MAXLEN],
    )  # fmt: skip


def _report_failure(spec: dict, rt: Runtime, error: str) -> None:
    s = get_settings()
    if spec.get("job"):
        _scripts_of(rt).fail_job(
            keys=[keys.job(spec["job"]), keys.LEDGER, keys.INFLIGHT],
            args=[error, time.time(), inflight_job(spec["job"])],
        )
        return
    payload = encode_failure(spec["id"], error)
    _scripts_of(rt).finish_inline(*_finish_inline_args(spec, payload, s.result_ttl_s, LedgerField.failed))
