"""``inferpool health worker|scaler``: exit 0 while a process shows it is alive in Redis (container checks).

* worker: its heartbeat hash (``workers.heartbeat``) was updated within ``keys.WORKER_STALE_S``. The worker's
  main process beats every second once it is ready to consume; it is what the scaler and the exporter
  count as a live worker, so "healthy" means "seen by the scaler".
* scaler: its health key (``scaler.daemon``) still exists; it expires after a few missed ticks.

Cheap on purpose (the settings and one Redis round trip, ~0.3 s of CPU): a ``celery inspect ping`` would
import Celery and broadcast to every worker, on every check of every container.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from inferpool import keys

if TYPE_CHECKING:
    import redis


def worker_problem(client: redis.Redis, node: str, now: float) -> str | None:
    """Why ``node`` does not count as alive, or None."""
    from inferpool.records import HeartbeatField  # numpy comes with it: not for every `inferpool` start

    updated = client.hget(keys.worker(node), HeartbeatField.updated)
    if updated is None:
        return f"no heartbeat from {node}"
    age_s = now - float(updated)
    if age_s > keys.WORKER_STALE_S:
        return f"last heartbeat from {node} {age_s:.1f} s ago (stale after {keys.WORKER_STALE_S:.0f} s)"
    return None


def scaler_problem(client: redis.Redis) -> str | None:
    return None if client.exists(keys.SCALER_HEALTH) else "no scaler health key (the scaler is not ticking)"


def add_health_command(sub: Any) -> None:
    p = sub.add_parser("health", help="exit 0 if a worker's heartbeat is fresh or the scaler is ticking")
    p.add_argument("process", choices=["worker", "scaler"])
    p.add_argument("--node", help="worker node name (default work@<this hostname>)")
    p.set_defaults(fn=run_health)


def run_health(ns: argparse.Namespace) -> int:
    import redis

    from inferpool.redis_client import sync_client
    from inferpool.settings import get_settings

    client = sync_client(get_settings().redis_url)
    try:
        if ns.process == "worker":
            node = ns.node or f"work@{socket.gethostname()}"
            problem = worker_problem(client, node, time.time())
        else:
            problem = scaler_problem(client)
    except (redis.RedisError, OSError) as exc:
        problem = f"cannot reach Redis: {type(exc).__name__}"
    finally:
        client.close()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0
