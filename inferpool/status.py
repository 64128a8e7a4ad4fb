"""The system's own view, read from Redis: queues, workers and the scaler. Served at /v1/monitoring/status."""

from __future__ import annotations

import time
from typing import Any

import orjson

from inferpool import keys, queues
from inferpool.records import Heartbeat, HeartbeatField, decode_ledger

DECISIONS_SHOWN = 50


async def live_workers(aclient) -> list[str]:
    """Hostnames of workers whose heartbeat is fresh."""
    now = time.time()
    names = await aclient.zrangebyscore(keys.WORKERS, now - keys.WORKER_STALE_S, "+inf")
    return [n.decode() for n in names]


async def ready_workers(aclient) -> list[str]:
    """Live workers that can serve: a worker without a usable model beats with ``ready=0`` (workers.serving).
    A heartbeat without the field comes from a worker that predates it, which served whatever it had."""
    names = await live_workers(aclient)
    pipe = aclient.pipeline(transaction=False)
    for n in names:
        pipe.hget(keys.worker(n), HeartbeatField.ready)
    flags = await pipe.execute() if names else []
    return [n for n, ready in zip(names, flags, strict=True) if ready != b"0"]


async def collect(aclient) -> dict:
    snap = await queues.asnapshot(aclient)
    names = await live_workers(aclient)
    pipe = aclient.pipeline(transaction=False)
    for n in names:
        pipe.hgetall(keys.worker(n))
    pipe.hgetall(keys.SCALER_STATE)
    pipe.lrange(keys.SCALER_DECISIONS, 0, DECISIONS_SHOWN - 1)
    pipe.hgetall(keys.LEDGER)
    res = await pipe.execute()
    workers = {}
    for n, h in zip(names, res[: len(names)], strict=True):
        if h:
            hb = Heartbeat.decode(n, None, h)
            workers[n] = {
                "processes": hb.processes,
                "busy": hb.busy,
                "queues": hb.queues,
                "ready": hb.ready,
                "reason": hb.reason,
            }
    scaler_h, decisions_raw, ledger_h = res[len(names) :]
    scaler: dict[str, Any] = {"desired": None, "actual": None, "decisions": []}
    if scaler_h:
        scaler["desired"] = int(scaler_h.get(b"desired", 0))
        scaler["actual"] = int(scaler_h.get(b"actual", 0))
        scaler["updated"] = float(scaler_h.get(b"updated", 0))
    scaler["decisions"] = [orjson.loads(d) for d in reversed(decisions_raw)]
    ledger = decode_ledger(ledger_h)
    return {
        "time": snap.taken_at,
        "queues": {q: {"depth": s.depth, "oldest_age_s": round(s.oldest_age_s, 4)} for q, s in snap.queues.items()},
        "unacked": snap.unacked,
        "unacked_oldest_age_s": round(snap.unacked_oldest_age_s, 4),
        "workers": workers,
        "pool_processes": sum(w["processes"] for w in workers.values()),
        "busy_processes": sum(w["busy"] for w in workers.values()),
        "scaler": scaler,
        "ledger": ledger,
    }
