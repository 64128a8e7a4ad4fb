"""Sending one predict task: the message every inferpool producer (API, re-dispatcher) builds the same way.

The message is Celery's task protocol 2 in the envelope kombu's Redis transport keeps on a queue list
(``LPUSH <queue>``; priority 0 is the bare list name), built here and pushed with one Redis command.
Going through ``Celery.send_task`` instead cost the API a publish thread (kombu's producer is
synchronous), a GIL hand-off per task and ~10 dict copies; the bytes on the queue are the same.

Two task names: ``inferpool.predict`` (work and bulk queues) sends task events, so Flower lists those
tasks; ``inferpool.predict_online`` (micro-batches, one per few requests) sends none: its events were
~40 % of the online worker's main process (three synchronous ``PUBLISH`` round trips per task) and
most of Flower's CPU. Its figures are in inferpool's own metrics.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from typing import Any

import orjson
import redis

from inferpool import keys, metrics
from inferpool.errors import BrokerUnavailable

TASK_PREDICT = "inferpool.predict"
TASK_PREDICT_ONLINE = "inferpool.predict_online"
TASK_NAMES = (TASK_PREDICT, TASK_PREDICT_ONLINE)
# What a Redis client raises when the broker is away or refuses writes for now (full under maxmemory, a replica
# after a failover); the API turns BrokerUnavailable into a 503 with Retry-After, and nothing was accepted.
BROKER_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_name(queue: str) -> str:
    return TASK_PREDICT_ONLINE if queue == keys.QUEUE_ONLINE else TASK_PREDICT


def task_message(task_id: str, spec: dict[str, Any], queue: str, enqueued_at: float | None = None) -> bytes:
    """The bytes kombu would store for ``send_task(task_name(queue), args=[spec], task_id=task_id)``.

    ``argsrepr`` carries sizes only: rows never reach Flower or the event stream. ``properties`` comes
    last, so ``correlation_id`` sits near the end of the message, where the re-dispatcher looks first.
    """
    argsrepr = f"(rows={spec.get('n')}, work_ms={spec.get('work_ms', 0)})"
    body = orjson.dumps([[spec], {}, _EMBED])
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": task_name(queue), "id": task_id, "shadow": None, "eta": None,
                "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                "root_id": task_id, "parent_id": None, "argsrepr": argsrepr, "kwargsrepr": "{}",
                "origin": _ORIGIN, "ignore_result": True,
                keys.ENQUEUED_HEADER: enqueued_at if enqueued_at is not None else time.time(),
            },
            "properties": {
                "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()), "correlation_id": task_id,
            },
        }
    )  # fmt: skip


def send_predict(client: redis.Redis, task_id: str, spec: dict[str, Any], queue: str) -> None:
    """Publish ``spec`` as a predict task; :class:`BrokerUnavailable` when Redis cannot be reached.

    The task id is the caller's: a copy sent again under the same id finishes as a counted duplicate.
    """
    try:
        client.lpush(queue, task_message(task_id, spec, queue))
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
    metrics.TASKS_ENQUEUED.labels(queue=queue).inc()
