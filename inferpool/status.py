"""The system's own view, read from Redis: queues, workers and the scaler. Served at /v1/monitoring/status."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
import redis
import redis.asyncio

from inferpool import keys, queues
from inferpool.records import Heartbeat, decode_ledger

DECISIONS_SHOWN = 50


def _fresh_since(since: float | None) -> float:
    return time.time() - keys.WORKER_STALE_S if since is None else since


def heartbeats(client: redis.Redis, since: float | None = None) -> list[Heartbeat]:
    """The workers whose last beat is at or after ``since`` (epoch s; by default the live ones), with their
    heartbeats. Two round trips: the names, then their hashes (a hash gone meanwhile reads empty: not live)."""
    seen = cast(
        list[tuple[bytes, float]], client.zrangebyscore(keys.WORKERS, _fresh_since(since), "+inf", withscores=True)
    )
    pipe = client.pipeline(transaction=False)
    for name, _ in seen:
        pipe.hgetall(keys.worker(name.decode()))
    hashes = pipe.execute() if seen else []
    return [Heartbeat.decode(name, beat, raw) for (name, beat), raw in zip(seen, hashes, strict=True)]


async def aheartbeats(aclient: redis.asyncio.Redis, since: float | None = None) -> list[Heartbeat]:
    """``heartbeats`` on an asyncio client."""
    seen = cast(
        list[tuple[bytes, float]],
        await aclient.zrangebyscore(keys.WORKERS, _fresh_since(since), "+inf", withscores=True),
    )
    pipe = aclient.pipeline(transaction=False)
    for name, _ in seen:
        pipe.hgetall(keys.worker(name.decode()))
    hashes = await pipe.execute() if seen else []
    return [Heartbeat.decode(name, beat, raw) for (name, beat), raw in zip(seen, hashes, strict=True)]


async def live_workers(aclient: redis.asyncio.Redis) -> list[str]:
    """Hostnames of workers whose heartbeat is fresh."""
    names = cast(list[bytes], await aclient.zrangebyscore(keys.WORKERS, _fresh_since(None), "+inf"))
    return [n.decode() for n in names]


async def ready_workers(aclient: redis.asyncio.Redis) -> list[str]:
    """Live workers that can serve: a worker without a usable model beats with ``ready=0`` (workers.serving).
    A heartbeat without the field comes from a worker that predates it, which served whatever it had."""
    return [hb.name for hb in await aheartbeats(aclient) if hb.ready]


async def collect(aclient: redis.asyncio.Redis) -> dict:
    snap = await queues.asnapshot(aclient)
    beats = await aheartbeats(aclient)
    pipe = aclient.pipeline(transaction=False)
    pipe.hgetall(keys.SCALER_STATE)
    pipe.lrange(keys.SCALER_DECISIONS, 0, DECISIONS_SHOWN - 1)
    pipe.hgetall(keys.LEDGER)
    res = await pipe.execute()
    workers = {
        hb.name: {
            "processes": hb.processes,
            "busy": hb.busy,
            "queues": hb.queues,
            "ready": hb.ready,
            "reason": hb.reason,
        }
        for hb in beats
        if hb.fields
    }
    scaler_h, decisions_raw, ledger_h = res
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
