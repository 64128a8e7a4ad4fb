"""Queue names and Redis key layout, in one place.

Every key inferpool writes starts with ``inferpool:`` so a shared Redis stays tidy.
"""

from __future__ import annotations

PREFIX = "inferpool"

# Queues. Light rows are micro-batched onto ONLINE; a request carrying
# simulated work goes alone onto WORK so no light request waits behind it;
# bulk job chunks go onto BULK.
QUEUE_ONLINE = "inferpool.online"
QUEUE_WORK = "inferpool.work"
QUEUE_BULK = "inferpool.bulk"
ALL_QUEUES = (QUEUE_ONLINE, QUEUE_WORK, QUEUE_BULK)
# Queues whose tasks take milliseconds (a micro-batch, a job chunk): a worker that consumes only these keeps
# no unacked record in Redis (workers.delivery), and their lost messages are resent within seconds
# (workers.redispatch), not after the work queue's visibility timeout.
SHORT_QUEUES = frozenset({QUEUE_ONLINE, QUEUE_BULK})

# Message header stamped at publish time (epoch seconds, float).
ENQUEUED_HEADER = "inferpool_enqueued"

# kombu's Redis transport keeps unacked messages here (default names).
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu uses for one queue, one per priority step (0 is the bare name)."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_input(job_id: str, chunk: int) -> str:
    return f"{PREFIX}:job:{job_id}:in:{chunk}"


def job_output(job_id: str, chunk: int) -> str:
    return f"{PREFIX}:job:{job_id}:out:{chunk}"


def job_done_chunks(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:done"


def batch_result(task_id: str) -> str:
    return f"{PREFIX}:batch:{task_id}"


def batch_pending(task_id: str) -> str:
    """Set by the API once an inline task's requests count as accepted: polls answer "queued" meanwhile."""
    return f"{PREFIX}:batch:{task_id}:pending"


def batch_spec(task_id: str) -> str:
    """An inline task's message spec (its rows included), kept until it finishes so it can be sent again."""
    return f"{PREFIX}:batch:{task_id}:spec"


def reply_list(instance_id: str) -> str:
    return f"{PREFIX}:reply:{instance_id}"


def idempotency(key_id: str, key: str) -> str:
    return f"{PREFIX}:idem:{key_id}:{key}"


def quota_bucket(key_id: str, resource: str) -> str:
    """A key id's token bucket for one resource ("rows", "work_ms"): a hash {t: tokens, ts: ms}."""
    return f"{PREFIX}:quota:{key_id}:{resource}"


def audit(job_id: str) -> str:
    return f"{PREFIX}:audit:{job_id}"


AUDIT_INDEX = f"{PREFIX}:audit:index"
LEDGER = f"{PREFIX}:ledger"
# Accepted work not yet finished, scored by its last sign of progress (epoch s): members are
# "job:<job id>" and "batch:<task id>". The re-dispatcher (workers.redispatch) reads it.
INFLIGHT = f"{PREFIX}:inflight"
REDISPATCH_LOCK = f"{PREFIX}:redispatch:lock"
# Signs the job ids of micro-batch slices when INFERPOOL_JOB_ID_SECRET is not set: made once, shared by every
# API process on this Redis.
JOB_ID_SECRET = f"{PREFIX}:job-id-secret"


def chunk_task_id(job_id: str, chunk: int) -> str:
    return f"{job_id}-{chunk}"


SCALER_HEALTH = f"{PREFIX}:scaler:health"
SCALER_STATE = f"{PREFIX}:scaler:state"
DRIFT_SAMPLES = f"{PREFIX}:drift:samples"
DRIFT_CLASSES = f"{PREFIX}:drift:classes"
# The latest drift evaluation (JSON), kept a few seconds for the drift route and the exporter to share.
DRIFT_REPORT = f"{PREFIX}:drift:report"
FEEDBACK = f"{PREFIX}:feedback"
STATS_TASKS = f"{PREFIX}:stats:tasks"
# Each finished task appends {"w": queue wait s, "r": run s} to its queue's stream (entry id = finish time, ms):
# the scaler's queue-wait, service-time and completion signal. Capped: ~2 min of work at 30 tasks/s.
TASK_SAMPLES_MAXLEN = 4096
WORKERS = f"{PREFIX}:workers"
SCALER_DECISIONS = f"{PREFIX}:scaler:decisions"
# A worker heartbeat older than this means the worker is gone.
WORKER_STALE_S = 5.0


def worker(hostname: str) -> str:
    return f"{PREFIX}:worker:{hostname}"


def task_samples(queue: str) -> str:
    return f"{PREFIX}:stats:done:{queue}"


# Model rollout (inferpool.rollout_store): the plan (JSON), the audit stream of every change of share, the
# verdict loop's lock, and per plan, step and version the window's figures (a hash and a capped list).
ROLLOUT_PLAN = f"{PREFIX}:rollout:plan"
ROLLOUT_AUDIT = f"{PREFIX}:rollout:audit"
ROLLOUT_LOCK = f"{PREFIX}:rollout:lock"


def rollout_stats(plan_id: str, step: int, version: str) -> str:
    return f"{PREFIX}:rollout:{plan_id}:{step}:{version}"


def rollout_model_ms(plan_id: str, step: int, version: str) -> str:
    return f"{PREFIX}:rollout:{plan_id}:{step}:{version}:ms"
