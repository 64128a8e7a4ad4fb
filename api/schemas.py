"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

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


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


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
