"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from inferpool.records import JobStatus

# Strict: "1.5" and true are refused rather than coerced; NaN and Infinity are refused too.
Feature = Annotated[float, Strict(), Field(allow_inf_nan=False)]
WorkMs = Annotated[int, Strict(), Field(ge=0, description="Simulated extra inference time in milliseconds.")]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[list[Feature]] = Field(..., min_length=1, description="Rows of features.")
    work_ms: WorkMs = 0


class PredictResponse(BaseModel):
    predictions: list[int]
    job_id: str
    model_version: str


class CompatRequest(BaseModel):
    """The body of the single-process reference server's ``/predict``."""

    X: list[Feature] = Field(..., min_length=1)
    work: WorkMs = 0


class CompatResponse(BaseModel):
    prediction: int
    model_version: str = Field(description="The model version that answered.")


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    status_url: str
    rows: int


class Progress(BaseModel):
    rows_done: int
    rows_total: int


class Timings(BaseModel):
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    queue_wait_s: float | None = Field(None, description="Submit to the first row starting.")
    run_s: float | None = Field(None, description="First start to last finish.")


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    progress: Progress
    model_version: str | None = None
    timings: Timings
    predictions: list[int] | None = None
    error: str | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(..., min_length=1, max_length=200)
    row: Annotated[int, Strict(), Field(ge=0)] = 0
    label: Annotated[int, Strict()]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[FeedbackItem] = Field(..., min_length=1, max_length=10_000)


# --- errors: RFC 9457 problem details (application/problem+json), built in api/errors.py ---------------


class ProblemDetail(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. instances.3.7.")
    message: str


class Problem(BaseModel):
    """An error answer. ``type`` names the kind for programs; ``detail`` says what is wrong and names the field."""

    type: str = Field(description="URI naming the problem type, e.g. tag:inferpool,2026:problem/invalid_input.")
    title: str = Field(description="Short summary of the problem type (the same for every occurrence).")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What is wrong with this request; names the field where there is one.")
    instance: str = Field(description="The request path this problem occurred on.")
    field: str | None = Field(None, description="The offending field (dotted path), or a header's name.")
    details: list[ProblemDetail] | None = Field(None, description="422 only: each invalid field (at most 20).")
    job_id: str | None = Field(None, description="504 only: the id to poll with GET /v1/jobs/{job_id}.")


# --- monitoring ---------------------------------------------------------------------------------
# Documentation of the monitoring routes' bodies (inferpool.drift.report and inferpool.feedback build them).

Level = Literal["none", "moderate", "major", "insufficient_data"]
WindowStatus = Literal["stable", "drifted", "insufficient_data"]


class DriftFeature(BaseModel):
    index: int
    importance: float = Field(description="Share of the model's permutation importance (sums to 1).")
    important: bool = Field(description="Among the fewest features carrying drift_top_importance of it.")
    impact: float = Field(description="importance x drift in units of the major threshold; the sort key.")
    verdict: Level
    kind: Literal["refused", "stuck", "mean_shift", "scale", "shape"] | None
    psi: float | None
    ks: float | None
    p_chi2: float | None = Field(description="Chi-square p-value of the window's bin counts.")
    p_ks: float | None = Field(description="KS p-value for the window's size.")
    refused: int = Field(description="Rows of the window refused at the API for this feature.")
    refused_share: float | None
    mean: float | None
    train_mean: float
    mean_shift_std: float | None
    std_ratio: float | None


class DriftPredictions(BaseModel):
    classes: list[str]
    expected: list[float]
    observed: list[float] | None
    psi: float | None
    p_value: float | None
    verdict: Level
    n: int
    n_unknown: int


class DriftThresholds(BaseModel):
    psi_moderate: float
    psi_major: float
    alpha_moderate: float
    alpha_major: float
    min_samples: int
    weighted_share: float
    top_importance: float
    refused_moderate: float
    refused_major: float


class DriftResponse(BaseModel):
    status: WindowStatus
    drifted: bool
    reasons: list[str]
    model_version: str
    n_samples: int = Field(description="Predicted rows in the window.")
    n_refused: int = Field(description="Refused rows in the window.")
    min_samples: int
    thresholds: DriftThresholds
    importance_source: str | None
    weighted_share: float | None
    n_features: int
    n_features_drifted: int
    features: list[DriftFeature] = Field(description="Most impact first.")
    predictions: DriftPredictions | None


class LabelDelay(BaseModel):
    p50: float | None
    p95: float | None


class ConceptVerdict(BaseModel):
    status: WindowStatus
    drifted: bool
    n: int
    correct: int
    accuracy: float | None
    training_score: float | None = Field(description="Held-out accuracy recorded at train/register time.")
    drop: float | None
    p_value: float | None
    window: int
    min_labels: int
    reason: str | None


class AccuracyResponse(BaseModel):
    count: int
    correct: int
    accuracy: float | None
    label_delay_s: LabelDelay
    concept: ConceptVerdict


class FeedbackSummary(BaseModel):
    count: int
    correct: int
    accuracy: float | None
    label_delay_s: LabelDelay


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="Labels recorded by this request.")
    summary: FeedbackSummary


# --- ops and admin ------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class ReadyChecks(BaseModel):
    redis: str = Field(description='"ok", or "unreachable (<error>)".')
    workers: int = Field(description="Live workers that have loaded their model.")
    model: str | None = Field(description="The served model version; null when there is none.")


class Readiness(BaseModel):
    """The same body on 200 (ready) and 503 (not ready): ``checks`` says which check failed."""

    ready: bool
    checks: ReadyChecks


class FeatureBins(BaseModel):
    edges: list[float | None] = Field(description="Bin edges; the outer ones are null (-inf, +inf).")
    proportions: list[float]
    mean: float
    std: float


class ModelRuntime(BaseModel):
    runtime: Literal["onnx", "joblib"]
    file: str | None = None
    sha256: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    rows_checked: int = 0
    disagreements: int = 0
    reason: str | None = Field(None, description="Why the joblib model serves, when it does.")
    label_dtype: str | None = None


class HeldOutScore(BaseModel):
    method: str
    n_rows: int
    score: float = Field(description="Accuracy on rows the model did not see.")
    importance: list[float] = Field(description="Permutation importance per feature.")
    predicted_proportions: list[float]


class ModelManifest(BaseModel):
    version: str
    sha256: str
    file: str
    n_features: int
    classes: list[int]
    class_proportions: list[float]
    created: float = Field(description="Epoch seconds.")
    estimator: str
    features: list[FeatureBins]
    runtime: ModelRuntime
    n_train: int | None
    held_out: HeldOutScore | None


class QueueState(BaseModel):
    depth: int = Field(description="Messages waiting, all priority sub-lists.")
    oldest_age_s: float


class WorkerState(BaseModel):
    processes: int
    busy: int
    queues: list[str]
    ready: bool
    reason: str = Field(description="Why the worker is not ready, when it is not.")


class ScalerState(BaseModel):
    desired: int | None
    actual: int | None
    updated: float | None = None
    decisions: list[dict[str, Any]] = Field(description="The newest decisions, oldest first.")


class SystemStatus(BaseModel):
    time: float
    queues: dict[str, QueueState]
    unacked: int
    unacked_oldest_age_s: float
    workers: dict[str, WorkerState]
    pool_processes: int
    busy_processes: int
    scaler: ScalerState
    ledger: dict[str, int] = Field(description="accepted, succeeded, failed, duplicates, ..., in_flight.")


class AuditRecord(BaseModel):
    job_id: str
    key_id: str
    submitted: float = Field(description="Epoch seconds.")
    model_version: str
    rows: int
    outcome: str = Field(description="The job's status now, or expired.")


class AuditLog(BaseModel):
    records: list[AuditRecord] = Field(description="Newest first.")


class RolloutPlan(BaseModel):
    """A model rollout: the candidate's schedule, where it stands and its last verdict."""

    id: str
    mode: Literal["canary", "shadow"]
    stable: str = Field(description="The version that answers outside the candidate's share.")
    candidate: str
    steps: list[float] = Field(description="canary: the candidate's share per step (%); shadow: the sampled %.")
    step_s: float = Field(description="Minimum seconds per step.")
    min_requests: int = Field(description="Minimum candidate requests per step.")
    started_at: float = Field(description="Epoch seconds.")
    started_by: str
    step: int = Field(description="Index into steps.")
    step_started: float = Field(description="Epoch seconds.")
    state: Literal["running", "paused", "promoted", "rolled_back", "aborted"]
    rev: int = Field(description="Bumped by every change.")
    last_verdict: dict[str, Any] | None = Field(None, description="action, reason, at and the figures judged.")


class RolloutChange(BaseModel):
    """One audited change of a rollout: who, when, why, and the candidate's share before and after."""

    at: float = Field(description="Epoch seconds.")
    by: str = Field(description="The admin key's id, or verdict for an automatic decision.")
    action: str
    why: str
    plan: str
    mode: Literal["canary", "shadow"]
    stable: str
    candidate: str
    state: Literal["running", "paused", "promoted", "rolled_back", "aborted"]
    step: int
    share_before: float
    share_after: float


class RolloutAudit(BaseModel):
    records: list[RolloutChange] = Field(description="Newest first.")
