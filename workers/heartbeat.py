"""Worker heartbeats in Redis: pool size, busy processes, the queues it consumes and whether it can serve.

Written by the worker's main process, which knows its pool and its active
requests; the key expires so a vanished worker drops out of every view.
A worker without a usable model (``workers.serving``) beats with ``ready=0``,
its reason and no queues: readiness and capacity count it out.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import redis
from celery.signals import worker_ready
from celery.worker import state as worker_state

from inferpool import keys
from inferpool.records import encode_heartbeat
from inferpool.redis_client import sync_client
from inferpool.settings import get_settings
from workers.serving import gate
from workers.ticker import Ticker

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# More fields for the heartbeat hash, set by other modules of the worker (workers.metrics_server: "metrics").
extra_fields: dict[str, str] = {}
_ticker = Ticker("inferpool-heartbeat")


def _beat(client: redis.Redis, consumer: Any) -> None:
    now = time.time()
    name = consumer.hostname
    pool = consumer.pool
    processes = len(pool._pool._pool) if hasattr(pool, "_pool") and pool._pool else pool.num_processes
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        keys.worker(name),
        mapping={
            **encode_heartbeat(
                processes, len(worker_state.active_requests), list(gate.serving()), gate.ready, gate.reason,
                os.getpid(), socket.gethostname(), now,
            ),
            **extra_fields,
        },
    )  # fmt: skip
    pipe.expire(keys.worker(name), int(keys.WORKER_STALE_S) * 2)
    pipe.zadd(keys.WORKERS, {name: now})
    pipe.zremrangebyscore(keys.WORKERS, 0, now - 3600)
    pipe.execute()


def _leave(client: redis.Redis, name: str) -> None:
    client.zrem(keys.WORKERS, name)
    client.delete(keys.worker(name))


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    client = sync_client(get_settings().redis_url)
    _ticker.start(HEARTBEAT_S, lambda: _beat(client, sender), on_stop=lambda: _leave(client, sender.hostname))
