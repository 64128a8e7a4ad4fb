"""Sending one predict task: the message every inferpool producer (API, re-dispatcher) builds the same way."""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from inferpool import keys, metrics
from inferpool.errors import BrokerUnavailable

TASK_NAME = "inferpool.predict"


def send_predict(celery: Celery, task_id: str, spec: dict[str, Any], queue: str) -> None:
    """Publish ``spec`` as a predict task; :class:`BrokerUnavailable` when Redis cannot be reached.

    The task id is the caller's: a copy sent again under the same id finishes as a counted duplicate.
    """
    try:
        celery.send_task(
            TASK_NAME,
            args=[spec],
            task_id=task_id,
            queue=queue,
            headers={keys.ENQUEUED_HEADER: time.time()},
            # Rows never appear in Flower or the event stream: sizes only.
            argsrepr=f"(rows={spec.get('n')}, work_ms={spec.get('work_ms', 0)})",
            # Results travel on inferpool's own keys; without this Celery subscribes to a result channel per task.
            ignore_result=True,
            kwargsrepr="{}",
            retry=True,
        )
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
    metrics.TASKS_ENQUEUED.labels(queue=queue).inc()


def chunk_rows(n_rows: int, rows_per_chunk: int, chunk: int) -> int:
    """How many of a job's ``n_rows`` rows its chunk number ``chunk`` holds."""
    return min(rows_per_chunk, n_rows - chunk * rows_per_chunk)


def chunk_spec(job_id: str, chunk: int, n_rows: int, work_ms: int) -> dict[str, Any]:
    """The message of one job chunk: a reference to its rows in Redis, never the rows themselves.

    Chunks carrying simulated work share the work queue with heavy requests; plain ones go to bulk.
    """
    queue = keys.QUEUE_WORK if work_ms else keys.QUEUE_BULK
    return {"id": f"{job_id}:{chunk}", "job": job_id, "chunk": chunk, "n": n_rows, "work_ms": work_ms, "queue": queue}
