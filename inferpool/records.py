"""The records inferpool writes to Redis and sends over the broker, each with its encode and decode.

* the **task spec**, a predict task's one argument (:class:`TaskSpec`): an inline task carries its rows,
  a job chunk names its job and chunk (:func:`inline_spec`, :func:`chunk_spec`);
* the **reply** of an inline task (:class:`Reply`), pushed to the caller's reply list and kept as the
  task's result;
* the **job hash** (:class:`JobField`, :func:`new_job`, :class:`JobRecord`) and its :class:`JobStatus`;
* the **ledger**, a hash of counters (:class:`LedgerField`, :func:`decode_ledger`);
* the **heartbeat** of a worker (:class:`Heartbeat`), a hash beside its score in the workers set;
* the **in-flight entry** (:class:`InflightEntry`): a member of ``keys.INFLIGHT`` naming an accepted job
  or a pollable inline task, scored by its last progress.

Plain dicts, TypedDicts and dataclasses, not pydantic models: specs and replies are built and read on the
per-request path, whose CPU budget ``inferpool/publish.py`` accounts for. The Lua side of these records
is in ``inferpool/scripts.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

import numpy as np
import orjson

from inferpool import keys


class JobStatus(StrEnum):
    """Where a job (or a pollable inline task) is: queued -> running -> succeeded | failed."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


ENDED = frozenset({JobStatus.succeeded, JobStatus.failed})


class LedgerField(StrEnum):
    """The ledger's counters (``keys.LEDGER``); drained, accepted = succeeded + failed."""

    accepted = "accepted"
    succeeded = "succeeded"
    failed = "failed"
    duplicates = "duplicates"
    redelivered = "redelivered"
    redispatched = "redispatched"


def decode_ledger(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, int]:
    """The ledger hash as counts by name; ``in_flight`` added: accepted work not yet ended."""
    ledger = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    ledger["in_flight"] = in_flight(ledger)
    return ledger


def in_flight(ledger: Mapping[str, int]) -> int:
    return (
        ledger.get(LedgerField.accepted, 0) - ledger.get(LedgerField.succeeded, 0) - ledger.get(LedgerField.failed, 0)
    )


class JobField(StrEnum):
    """The fields of a job hash (``keys.job``)."""

    status = "status"
    n_rows = "n_rows"
    n_chunks = "n_chunks"
    rows_done = "rows_done"
    chunks_done = "chunks_done"
    chunk_rows = "chunk_rows"
    submitted = "submitted"
    started = "started"
    finished = "finished"
    work_ms = "work_ms"
    model_version = "model_version"
    key_id = "key_id"
    accepted = "accepted"  # set once, when the job is fully queued and counted (scripts.AcceptJob)
    error = "error"
    queue_wait_sum_s = "queue_wait_sum_s"
    run_sum_s = "run_sum_s"


def new_job(
    n_rows: int, n_chunks: int, chunk_rows: int, work_ms: int, model_version: str, key_id: str, submitted: float
) -> dict[str, Any]:
    """A new job's hash: queued, nothing done."""
    return {
        JobField.status: JobStatus.queued.value, JobField.n_rows: n_rows, JobField.n_chunks: n_chunks,
        JobField.rows_done: 0, JobField.chunks_done: 0, JobField.chunk_rows: chunk_rows,
        JobField.submitted: submitted, JobField.work_ms: work_ms, JobField.model_version: model_version,
        JobField.key_id: key_id,
    }  # fmt: skip


def _float(v: str | None) -> float | None:
    return float(v) if v is not None else None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job hash as read back."""

    status: JobStatus
    n_rows: int
    n_chunks: int
    rows_done: int
    key_id: str | None
    model_version: str | None
    submitted: float | None
    started: float | None
    finished: float | None
    error: str | None

    @classmethod
    def decode(cls, raw: Mapping[bytes, bytes]) -> JobRecord | None:
        """None for a hash without status or size: one rebuilt by a late counter update after the job expired."""
        h = {k.decode(): v.decode() for k, v in raw.items()}
        if JobField.status not in h or JobField.n_rows not in h:
            return None
        return cls(
            status=JobStatus(h[JobField.status]),
            n_rows=int(h[JobField.n_rows]),
            n_chunks=int(h[JobField.n_chunks]),
            rows_done=int(h.get(JobField.rows_done, 0)),
            key_id=h.get(JobField.key_id),
            model_version=h.get(JobField.model_version),
            submitted=_float(h.get(JobField.submitted)),
            started=_float(h.get(JobField.started)),
            finished=_float(h.get(JobField.finished)),
            error=h.get(JobField.error),
        )


class TaskSpec(TypedDict):
    """A predict task's argument. Inline: ``id``, ``reqs``, ``reply`` and, with rows, ``rows`` (base64
    float32). Job chunk: ``job`` and ``chunk``, its rows under ``keys.job_input``."""

    id: str
    n: int
    work_ms: int
    queue: str
    reqs: NotRequired[int]
    reply: NotRequired[str | None]
    rows: NotRequired[str]
    job: NotRequired[str]
    chunk: NotRequired[int]
    mv: NotRequired[str]  # the model version the worker must run; absent: the one ``current`` names


def inline_spec(task_id: str, work_ms: int, reply: str, queue: str, reqs: int) -> TaskSpec:
    """An inline task without rows; the caller adds ``n`` and ``rows`` when it has some."""
    return {"id": task_id, "n": 0, "work_ms": work_ms, "reply": reply, "queue": queue, "reqs": reqs}


def chunk_rows(n_rows: int, rows_per_chunk: int, chunk: int) -> int:
    """How many of a job's ``n_rows`` rows its chunk number ``chunk`` holds."""
    return min(rows_per_chunk, n_rows - chunk * rows_per_chunk)


def chunk_spec(job_id: str, chunk: int, n_rows: int, work_ms: int, model_version: str | None = None) -> TaskSpec:
    """The message of one job chunk: a reference to its rows in Redis, never the rows themselves.

    Chunks carrying simulated work share the work queue with heavy requests; plain ones go to bulk.
    Its id is the chunk's task id (``keys.chunk_task_id``). Every chunk of a job names the job's model
    version (``mv``), so a job never mixes two versions.
    """
    queue = keys.QUEUE_WORK if work_ms else keys.QUEUE_BULK
    spec: TaskSpec = {
        "id": keys.chunk_task_id(job_id, chunk), "job": job_id, "chunk": chunk, "n": n_rows, "work_ms": work_ms,
        "queue": queue,
    }  # fmt: skip
    if model_version:
        spec["mv"] = model_version
    return spec


@dataclass(frozen=True)
class Reply:
    """An inline task's answer: predictions (or an error), the model version, and its times (epoch s)."""

    task_id: str
    predictions: np.ndarray | None
    model_version: str
    enqueued: float
    started: float
    finished: float
    error: str | None = None


def encode_reply(
    task_id: str, predictions: list[int], model_version: str, enq: float, start: float, end: float
) -> bytes:
    return orjson.dumps({"id": task_id, "p": predictions, "v": model_version, "enq": enq, "start": start, "end": end})


def encode_failure(task_id: str, error: str) -> bytes:
    return orjson.dumps({"id": task_id, "error": error})


def decode_reply(raw: bytes) -> Reply:
    d = orjson.loads(raw)
    preds = np.asarray(d["p"], dtype=np.int64) if "p" in d else None
    return Reply(
        d["id"], preds, d.get("v", ""), d.get("enq", 0.0), d.get("start", 0.0), d.get("end", 0.0), d.get("error")
    )


class HeartbeatField(StrEnum):
    """The fields of a worker's heartbeat hash (``keys.worker``), written each beat by ``workers/heartbeat.py``."""

    processes = "processes"  # pool processes
    busy = "busy"  # of them running a task
    queues = "queues"  # the queues it consumes, comma-separated
    ready = "ready"  # 0 while it has no usable model (it then consumes nothing); absent from older workers
    reason = "reason"  # why not ready
    pid = "pid"
    host = "host"
    updated = "updated"  # epoch s of the beat
    metrics = "metrics"  # host:port of its /metrics, once serving


def encode_heartbeat(
    processes: int, busy: int, queues: list[str], ready: bool, reason: str, pid: int, host: str, updated: float
) -> dict[str, Any]:
    return {
        HeartbeatField.processes: processes, HeartbeatField.busy: busy, HeartbeatField.queues: ",".join(queues),
        HeartbeatField.ready: int(ready), HeartbeatField.reason: reason, HeartbeatField.pid: pid,
        HeartbeatField.host: host, HeartbeatField.updated: updated,
    }  # fmt: skip


@dataclass(frozen=True)
class Heartbeat:
    """A worker's heartbeat: its name, the time of its last beat (epoch s) and its hash's fields."""

    name: str
    last_beat: float
    fields: dict[str, str]

    @classmethod
    def decode(cls, name: bytes | str, last_beat: float | None, raw: Mapping[bytes, bytes]) -> Heartbeat:
        """``last_beat`` is the worker's score in ``keys.WORKERS``; None takes the hash's own ``updated``."""
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        beat = float(fields.get(HeartbeatField.updated, 0)) if last_beat is None else float(last_beat)
        return cls(name.decode() if isinstance(name, bytes) else name, beat, fields)

    def live(self, now: float) -> bool:
        return now - self.last_beat <= keys.WORKER_STALE_S and bool(self.fields)

    @property
    def processes(self) -> int:
        return int(self.fields.get(HeartbeatField.processes, 0))

    @property
    def busy(self) -> int:
        return int(self.fields.get(HeartbeatField.busy, 0))

    @property
    def queues(self) -> list[str]:
        return self.fields.get(HeartbeatField.queues, "").split(",")

    @property
    def ready(self) -> bool:
        return self.fields.get(HeartbeatField.ready) != "0"

    @property
    def reason(self) -> str:
        return self.fields.get(HeartbeatField.reason, "")

    @property
    def host(self) -> str:
        return self.fields.get(HeartbeatField.host, "")

    @property
    def pid(self) -> int:
        return int(self.fields.get(HeartbeatField.pid, 0))

    @property
    def updated(self) -> float:
        return float(self.fields.get(HeartbeatField.updated, 0))

    @property
    def metrics(self) -> str | None:
        return self.fields.get(HeartbeatField.metrics)


def _number(v: bytes | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TaskSample:
    """One finished task in its queue's samples stream (``keys.task_samples``), appended by the finishing
    scripts (``scripts.FinishChunk``, ``scripts.FinishInline``): ``w`` its queue wait and ``r`` its run
    time, in seconds; the entry id is its finish time in ms on Redis's clock."""

    wait_s: float  # 0.0 when missing or unreadable
    run_s: float | None  # None when missing or unreadable

    @classmethod
    def decode(cls, fields: Mapping[bytes, bytes]) -> TaskSample:
        return cls(_number(fields.get(b"w")) or 0.0, _number(fields.get(b"r")))


def service_time_s(samples: list[TaskSample]) -> float | None:
    """The service-time estimate the API's backpressure and the scaler share: the mean run time of
    ``samples`` (each caller picks its own: the API the newest few per queue, the scaler a time window)."""
    runs = [s.run_s for s in samples if s.run_s is not None]
    return sum(runs) / len(runs) if runs else None


class InflightKind(StrEnum):
    job = "job"  # an accepted job (keys.job)
    batch = "batch"  # a pollable inline task (keys.batch_spec)


@dataclass(frozen=True, slots=True)
class InflightEntry:
    """A member of the in-flight set (``keys.INFLIGHT``): ``<kind>:<id>``, scored by its last progress."""

    kind: InflightKind
    ident: str

    def encode(self) -> str:
        return f"{self.kind.value}:{self.ident}"

    @classmethod
    def decode(cls, member: bytes) -> InflightEntry | None:
        """None for a member of no known kind."""
        kind, _, ident = member.decode().partition(":")
        try:
            return cls(InflightKind(kind), ident)
        except ValueError:
            return None


def inflight_job(job_id: str) -> str:
    return InflightEntry(InflightKind.job, job_id).encode()


def inflight_batch(task_id: str) -> str:
    return InflightEntry(InflightKind.batch, task_id).encode()
