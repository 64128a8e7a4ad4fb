"""One typed settings object for every inferpool process, read from the environment.

Variables carry the ``INFERPOOL_`` prefix, except ``REDIS_URL`` which is the
name every Redis client and compose file already uses. Secrets (API keys,
Flower credentials, the Redis password inside ``REDIS_URL``) come only from
here and are never logged: ``SecretStr`` keeps them out of reprs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERPOOL_", extra="ignore")

    # --- connections -------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "INFERPOOL_REDIS_URL"),
        description="Broker, result backend and job store. rediss:// and passwords supported.",
    )
    model_dir: Path = Field(Path("models"), description="Only model files here, matching their manifest, are loaded.")
    # auto: serve the compiled (onnxruntime) model when the manifest accepted one; joblib: always the joblib model.
    model_runtime: Literal["auto", "joblib"] = "auto"

    # --- delivery ----------------------------------------------------------
    # A message taken by a worker that dies without acking comes back after this
    # long. It must exceed the longest task (task_time_limit_s below), else a
    # slow task runs twice; shorter means a killed worker's work returns sooner.
    visibility_timeout_s: int = 60
    task_time_limit_s: int = 30
    # How often workers sweep the unacked set for expired messages.
    restore_interval_s: int = 2
    # The online and bulk queues' own visibility timeout: their tasks take milliseconds, so a message of
    # theirs held this long by a worker is one a dead worker took (the whole worker killed, not only a pool
    # process, whose message Celery puts back at once), and the workers' sweep puts it back on its queue
    # rather than leave light requests waiting out the work queue's visibility_timeout_s.
    online_redelivery_s: float = 5.0
    # How often one worker looks for work that shows no progress for a visibility timeout and whose
    # message is on no queue and held by no worker (lost outright), and sends it again.
    redispatch_interval_s: float = 5.0
    result_ttl_s: int = 3600
    # Task events (Flower's task list) from the work and bulk queues; micro-batches never send them.
    task_events: bool = True
    job_chunk_rows: int = 4096
    # A worker that cannot load its model consumes nothing and tries again this often (workers.serving).
    model_retry_s: float = 5.0
    # Redis fit for a queue (inferpool.redis_fit): API and workers refuse an evicting maxmemory-policy
    # (allkeys-*, volatile-*) unless this is set; new work is shed (429) once Redis holds this share of its
    # maxmemory, so that what was accepted still fits and a full Redis never refuses our acks.
    allow_eviction: bool = False
    redis_memory_shed_share: float = Field(0.8, gt=0, le=1)

    # --- model versions and rollout (inferpool.rollout) ---------------------
    # Versions each worker process keeps loaded (LRU): a rollout needs two; one more spares a reload after it.
    model_cache_versions: int = Field(3, ge=1)
    # A canary routes by this header's value when a request has it, else by the caller's API key id.
    rollout_key_header: str = "X-Rollout-Key"
    rollout_steps: str = "5,25,50,100"  # canary shares per step, %
    rollout_shadow_share: float = Field(10.0, gt=0, le=100)  # % of requests copied to a shadow candidate
    rollout_step_s: float = Field(300.0, gt=0)  # minimum time per step
    rollout_min_requests: int = Field(200, ge=1)  # minimum candidate requests per step
    rollout_tick_s: float = Field(1.0, gt=0)  # how often the verdict loop looks (one API process, a Redis lock)
    rollout_plan_cache_s: float = Field(0.5, ge=0)  # how long an API process reuses the plan it read
    rollout_error_margin: float = Field(0.01, ge=0, le=1)
    rollout_p99_ratio: float = Field(1.5, ge=1)
    rollout_p99_slack_ms: float = Field(5.0, ge=0)
    rollout_accuracy_margin: float = Field(0.03, ge=0, le=1)
    rollout_min_labels: int = Field(50, ge=1)
    rollout_breach_min_requests: int = Field(40, ge=1)
    rollout_p99_min_samples: int = Field(200, ge=1)

    # --- micro-batching (front end) ----------------------------------------
    batch_max_rows: int = 256
    batch_max_wait_ms: float = 5.0
    batch_latency_budget_ms: float = 60.0
    batch_max_in_flight: int = 2

    # --- API limits ----------------------------------------------------------
    predict_timeout_s: float = 10.0
    max_rows_per_request: int = 1024
    max_rows_per_job: int = 1_000_000
    max_body_bytes: int = 200 * 1024 * 1024  # POST /v1/jobs
    # Every other route (the one-call /predict, /v1/predict, /v1/feedback): 1,024 rows of 20 features are
    # ~0.4 MiB of JSON. Both limits refuse by Content-Length before a byte is read, and count streamed bytes.
    max_call_body_bytes: int = 1024 * 1024
    max_work_ms: int = 10_000
    # Per-key quotas: a token bucket per key id in Redis for rows and for work-ms (work_ms times the tasks it
    # holds a process in), each refilled at its rate and holding quota_burst_s of it. Unset: no quota. A
    # request costing more than a full bucket passes when the bucket is full and leaves it in debt.
    quota_rows_per_s: float | None = None
    quota_work_ms_per_s: float | None = None
    quota_burst_s: float = 10.0
    # Backpressure: shed new work when the oldest waiting message is older than
    # this (predict route) or than job_max_wait_s (job route), or the backlog is over the cap.
    predict_max_wait_s: float = 2.0
    job_max_wait_s: float = 30.0
    max_backlog_messages: int = 20_000

    # --- security ------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated key_id:secret pairs; when set, every /v1 and /predict call needs one."
    )
    admin_keys: SecretStr | None = Field(None, description="key_id:secret pairs allowed to call admin routes.")
    # on: the API refuses to start without INFERPOOL_API_KEYS (compose and `inferpool up` run so); off: data
    # routes open on purpose, keys ignored there; unset: keys required once configured, a warning otherwise.
    auth: Literal["on", "off"] | None = None
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    audit_ttl_s: int = 7 * 24 * 3600
    job_id_secret: SecretStr | None = Field(
        None,
        description="Signs /v1/predict job ids (a caller's slice of a micro-batch) to the caller's key; "
        "by default a random secret made once and kept in Redis.",
    )

    # --- ports for `inferpool up` -------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API processes behind the one port, each on its own SO_REUSEPORT socket (the kernel spreads connections
    # over them). One API process is the first thing to fill a core at saturation (wrk on 2 cores: one process
    # at 99 % of a core, 3,730 req/s at 128 connections; two, 6,015 req/s). None: 2, or 1 on a 1-core machine.
    api_processes: int | None = Field(None, ge=1)
    flower_port: int = 5555
    worker_metrics_port: int = 9808
    scaler_metrics_port: int = 9809

    # --- workers & scaler ---------------------------------------------------
    online_concurrency: int = 2
    # The online worker's pool (micro-batches and job chunks). threads: micro-batches run on the consumer's own
    # thread and chunks on threads in the worker's one process (workers.inline_pool), one copy of the model,
    # ~1-2 ms less light latency than prefork (bench: 4.4-4.9 against 5.7 ms p50 at 30 req/s); it dies whole,
    # its batches come back from their specs after online_redelivery_s once a replacement runs, and a task
    # past task_time_limit_s ends it (workers.watchdog). prefork: each task in a pool process of its own, and
    # a pool process that dies (a crash in native model code, the OOM killer) has its message put back at
    # once by the worker's main process.
    online_pool: Literal["prefork", "threads"] = "threads"
    # Two: one long request never holds the whole work pool, and a cold pool meets a first burst while the
    # scaler is still learning its rate and service time (an idle process costs memory, no CPU).
    work_concurrency_min: int = 2
    work_concurrency_max: int = 8
    scaler_wait_target_s: float = 0.1
    scaler_tick_s: float = 1.0
    scaler_scale_down_window_s: float = 30.0
    scaler_cooldown_s: float = 3.0
    scaler_dry_run: bool = False
    # What the scaler sizes: the workers consuming this queue whose node names start with the prefix
    # (work_concurrency_min/max bound their processes in total); the online group stays fixed.
    scaler_queue: str = "inferpool.work"
    scaler_worker_prefix: str = "work"
    scaler_policy: Literal["erlang", "tutorial"] = "erlang"  # tutorial: the +-1 latency-step baseline
    scaler_actuator: Literal["celery", "process", "compose", "external"] = "celery"
    # One worker's pool cap; beyond it the process actuator starts another worker on this host. By default
    # the whole pool's maximum: on one host a bigger pool is cheaper than more workers, since every worker's
    # main process spends CPU on each task it receives. More workers belong to more hosts or containers.
    scaler_worker_max_procs: int | None = None
    scaler_compose_service: str = "worker"
    scaler_compose_file: str | None = None
    scaler_metrics_host: str = "127.0.0.1"

    # --- monitoring ----------------------------------------------------------
    drift_window: int = 2000
    drift_sample_rate: float = 0.2
    # A feature is moderate (major) when its bins' p-value is under the alpha AND its PSI reaches the
    # threshold: the p-value keeps noise of small windows out (bench/drift_calibration.py measures the
    # false alarms), the PSI keeps trivially small changes of large windows out.
    drift_psi_moderate: float = 0.1
    drift_psi_major: float = 0.25
    drift_alpha_moderate: float = 0.01
    drift_alpha_major: float = 0.001
    drift_min_samples: int = 50  # no verdict below: under 5 rows per bin the chi-square is unreliable
    # The window is drifted when the drifting features carry this share of the model's permutation
    # importance, or when a feature among the fewest carrying drift_top_importance of it is major.
    drift_weighted_share: float = 0.3
    drift_top_importance: float = 0.8
    # Share of the window's rows refused at the API for a feature (missing, not finite, beyond float32).
    drift_refused_moderate: float = 0.01
    drift_refused_major: float = 0.05
    # The drift route and the exporter share one evaluation of the window for this long (0: never cached).
    drift_cache_s: float = 5.0
    # Concept drift: realised accuracy of the newest labelled predictions against the held-out score; drifted
    # when lower with p < alpha (binomial) and by at least min_drop.
    drift_accuracy_window: int = 500
    drift_accuracy_min_labels: int = 100
    drift_accuracy_alpha: float = 0.01
    drift_accuracy_min_drop: float = 0.05
    log_json: bool = False
    # One INFO line per predict task (job/task id, worker, model, durations), and Celery's own "received" and
    # "succeeded" lines; off, ours log at DEBUG and Celery's not at all (failures always do, at ERROR).
    log_task_events: bool = False
    log_level: str = "INFO"

    @field_validator("batch_max_rows", "job_chunk_rows", "max_rows_per_request", "batch_max_in_flight")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator(
        "drift_alpha_moderate", "drift_alpha_major", "drift_weighted_share", "drift_top_importance",
        "drift_refused_moderate", "drift_refused_major", "drift_accuracy_alpha",
    )  # fmt: skip
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be a fraction in (0, 1]")
        return v

    @field_validator("max_call_body_bytes", "quota_rows_per_s", "quota_work_ms_per_s", "quota_burst_s")
    @classmethod
    def _above_zero(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be above 0")
        return v

    @field_validator("auth", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        return (v.strip().lower() or None) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _delivery_limits(self) -> Settings:
        # A task still running when its message becomes visible again would run twice at once.
        if self.online_redelivery_s <= 0:
            raise ValueError(f"INFERPOOL_ONLINE_REDELIVERY_S ({self.online_redelivery_s}) must be above 0")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"INFERPOOL_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"INFERPOOL_TASK_TIME_LIMIT_S ({self.task_time_limit_s})"
            )
        return self

    @property
    def online_held_s(self) -> float:
        """How long an online or bulk message may stay unacked before a sweep puts it back: never longer than
        kombu's own visibility timeout would let it."""
        return min(self.online_redelivery_s, float(self.visibility_timeout_s))

    @property
    def api_process_count(self) -> int:
        """``api_processes``, or its default for this machine."""
        return self.api_processes or min(2, os.cpu_count() or 1)

    @property
    def worker_max_procs(self) -> int:
        """One work worker's pool cap (``INFERPOOL_SCALER_WORKER_MAX_PROCS``, else the whole pool's maximum)."""
        return self.scaler_worker_max_procs or self.work_concurrency_max


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()


def parse_keys(secret: SecretStr | None) -> dict[str, str]:
    """``"id1:s1,id2:s2"`` -> ``{"s1": "id1", ...}``: secret to key id, so a caller is named by id only."""
    if secret is None or not secret.get_secret_value().strip():
        return {}
    out: dict[str, str] = {}
    for pair in secret.get_secret_value().split(","):
        key_id, sep, value = pair.strip().partition(":")
        if not sep or not key_id or not value:
            raise ValueError("INFERPOOL_API_KEYS / INFERPOOL_ADMIN_KEYS entries must look like key_id:secret")
        out[value] = key_id
    return out
