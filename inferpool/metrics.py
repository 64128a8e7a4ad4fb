"""Every Prometheus metric an API or worker process records, named once.

Collection across processes uses prometheus_client's multiprocess mode: each
uvicorn and Celery prefork process writes its samples to memory-mapped files,
one directory per process group, summed when that group is scraped (the rule,
and why it cannot double count, is in ``inferpool.telemetry``). Pushing through
a gateway or Redis would add a hop per sample; a file-backed value costs a
memory write. Cluster-wide facts (queues, workers, the job ledger, drift) are
not here: ``inferpool.exporter`` reads them from Redis and exports them once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Queue waits reach minutes: a job is admitted while its predicted wait is under INFERPOOL_JOB_MAX_WAIT_S
# (30 s), and the prediction can be wrong; the last buckets tell 1 minute from 10.
WAIT_BUCKETS_S = (*LATENCY_BUCKETS_S, 60.0, 120.0, 300.0, 600.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

# --- API -------------------------------------------------------------------
HTTP_REQUESTS = Counter("inferpool_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "inferpool_http_request_duration_seconds", "HTTP request duration", ["route", "method"], buckets=LATENCY_BUCKETS_S
)
JOBS_ACCEPTED = Counter("inferpool_jobs_accepted_total", "Jobs and predict requests accepted", ["route"])
REQUESTS_SHED = Counter("inferpool_requests_shed_total", "Requests refused by backpressure", ["route", "reason"])
# Per-key quotas (api/quota.py), by key id (never the secret). What was spent is two metrics, one per unit
# (a sum over rows and milliseconds would mean nothing); the refusal names the resource that ran out:
# "rows" or "work_ms", as INFERPOOL_QUOTA_* names them.
QUOTA_CHARGED_ROWS = Counter("inferpool_quota_charged_rows_total", "Rows spent from a key's quota", ["key_id"])
QUOTA_CHARGED_WORK = Counter(
    "inferpool_quota_charged_work_seconds_total", "Simulated work (work_ms) spent from a key's quota", ["key_id"]
)
QUOTA_REFUSED = Counter("inferpool_quota_refused_total", "Requests refused by a key's quota", ["key_id", "resource"])
BATCHER_ROWS = Histogram("inferpool_batcher_batch_rows", "Rows per micro-batch sent by the API", buckets=ROWS_BUCKETS)
BATCHER_WAIT = Histogram(
    "inferpool_batcher_wait_seconds",
    "Time a request waited in the API for its batch to leave",
    buckets=LATENCY_BUCKETS_S,
)

# --- tasks (workers) ---------------------------------------------------------
TASKS_ENQUEUED = Counter("inferpool_tasks_enqueued_total", "Predict tasks published", ["queue"])
# outcome: success, failure (the task caught an error), retry, rejected (refused by the worker's consumer).
TASKS_COMPLETED = Counter("inferpool_tasks_completed_total", "Predict tasks finished", ["queue", "outcome"])
TASK_QUEUE_WAIT = Histogram(
    "inferpool_task_queue_wait_seconds", "Enqueue to start of a task", ["queue"], buckets=WAIT_BUCKETS_S
)
TASK_RUN = Histogram("inferpool_task_run_seconds", "Run time of a task", ["queue"], buckets=LATENCY_BUCKETS_S)
TASK_ROWS = Histogram("inferpool_task_batch_rows", "Rows per task", ["queue"], buckets=ROWS_BUCKETS)
PREDICTIONS = Counter("inferpool_predictions_total", "Predictions made", ["class_label", "model_version"])
DUPLICATES = Counter("inferpool_task_duplicates_total", "Tasks whose results had already been written")
# kombu marks a message it puts back (unacked past the visibility timeout, or its worker lost) as redelivered.
TASKS_REDELIVERED = Counter(
    "inferpool_tasks_redelivered_total", "Predict tasks started from a redelivered message", ["queue"]
)

# --- model -----------------------------------------------------------------------
# livemax: a process that exits (and says so, see workers/metrics_server.py) stops claiming its version.
# runtime: "onnx" (compiled, onnxruntime) or "joblib" (scikit-learn), as the process serves it.
MODEL_INFO = Gauge(
    "inferpool_model_info", "The served model", ["version", "sha256", "runtime"], multiprocess_mode="livemax"
)


# --- versions and rollout (API side: every answer is counted under the version that gave it) -------------
VERSION_REQUESTS = Counter(
    "inferpool_version_requests_total", "Predict requests answered, by model version", ["model_version", "outcome"]
)
VERSION_MODEL_TIME = Histogram(
    "inferpool_version_model_seconds", "Task run time, by model version", ["model_version"], buckets=LATENCY_BUCKETS_S
)
SHADOW_COMPARED = Counter("inferpool_shadow_compared_total", "Rows answered by a shadow candidate", ["model_version"])
SHADOW_DISAGREED = Counter(
    "inferpool_shadow_disagreements_total", "Shadow rows whose answer differs from the stable's", ["model_version"]
)
ROLLOUT_DECISIONS = Counter("inferpool_rollout_decisions_total", "Changes of a rollout plan", ["action", "by"])
ROLLOUT_SHARE = Gauge(
    "inferpool_rollout_candidate_ratio",
    "Candidate share of answers (0..1)",
    ["model_version"],
    multiprocess_mode="livemax",
)

# refused: a message whose spec names keys inferpool never writes (workers/specs.py), acked unrun.
OUTCOMES = ("success", "failure", "retry", "rejected", "refused")
SHED_ROUTES = ("/predict", "/v1/predict", "/v1/jobs")
ROLLOUT_ACTIONS = ("start", "advance", "pause", "resume", "abort", "promote", "rollback")


def init_worker_series(queues: Iterable[str]) -> None:
    """Zero-valued outcome and redelivery series for a worker's queues: rate() and alerts see 0, not nothing."""
    for q in queues:
        TASKS_REDELIVERED.labels(queue=q)
        for outcome in OUTCOMES:
            TASKS_COMPLETED.labels(queue=q, outcome=outcome)


def init_api_series() -> None:
    """Zero-valued shed series for the routes that shed, so a dashboard shows 0 before the first 429."""
    for route in SHED_ROUTES:
        REQUESTS_SHED.labels(route=route, reason="wait")
    for action in ROLLOUT_ACTIONS:
        for by in ("auto", "operator"):
            ROLLOUT_DECISIONS.labels(action=action, by=by)


def observe_task(queue: str, rows: int, wait_s: float, run_s: float, preds: np.ndarray, version: str) -> None:
    """Record one finished task. Class counts via ``np.unique``: a 4,096-row chunk costs no Python loop."""
    TASK_QUEUE_WAIT.labels(queue=queue).observe(wait_s)
    TASK_RUN.labels(queue=queue).observe(run_s)
    TASK_ROWS.labels(queue=queue).observe(rows)
    labels, counts = np.unique(np.asarray(preds), return_counts=True)
    for label, n in zip(labels.tolist(), counts.tolist(), strict=True):
        PREDICTIONS.labels(class_label=str(label), model_version=version).inc(n)
