"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Literal

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


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None
    job_id: str | None = None


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
