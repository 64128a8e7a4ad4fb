"""The re-dispatcher: a safety net under kombu's redelivery, for messages lost outright.

kombu's Redis transport takes a message with ``BRPOP`` and records it as
unacknowledged with a second command; a message popped at the instant Redis
stops is in neither place, so no worker and no visibility timeout will ever
bring it back (a Redis crash can also drop the last second of the AOF). The
work is not gone, though: a job's rows and an inline task's spec stay in
Redis until they finish.

Every accepted job and every inline task with a caller waits in
``keys.INFLIGHT``, scored by its last sign of progress. Every
``INFERPOOL_REDISPATCH_INTERVAL_S`` one worker (a lock in Redis decides which)
looks at the entries with no progress for a visibility timeout. Each
unfinished piece whose message is neither on a queue nor held by a worker (one
atomic look at both) is published again under the same task id. Results are
idempotent, so a copy that turns out to have been alive after all finishes as
a counted duplicate; nothing is ever resent while its message can still run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from inferpool import keys
from inferpool.publish import chunk_rows, chunk_spec, send_predict
from inferpool.redis_client import sync_client
from inferpool.settings import Settings, get_settings
from workers.app import make_app

logger = logging.getLogger(__name__)

# At most this many stalled entries per sweep; the rest wait for the next one.
SWEEP_LIMIT = 200

# KEYS: every queue list, then the unacked hash; ARGV: task ids. Returns the ids whose message is on a
# queue or held (unacked) by a worker. One script, so a message moving from queue to worker meanwhile is
# seen in one place or the other. Every kombu message names its task in properties.correlation_id.
_FIND_MESSAGES = """
local want = {}
for _, id in ipairs(ARGV) do want[id] = true end
local found = {}
local function look(m)
  local id = string.match(m, '"correlation_id": ?"([^"]*)"')
  if id and want[id] then
    found[#found + 1] = id
    want[id] = nil
  end
end
for i = 1, #KEYS - 1 do
  for _, m in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do look(m) end
end
for _, m in ipairs(redis.call('HVALS', KEYS[#KEYS])) do look(m) end
return found
"""


@dataclass
class SweepReport:
    stalled: int = 0
    finished: int = 0  # entries whose work had ended or expired: dropped from the set
    alive: int = 0  # pieces still queued or held by a worker: left alone
    resent: int = 0


def queue_lists() -> list[str]:
    return [lst for q in keys.ALL_QUEUES for lst in keys.priority_lists(q)]


def find_messages(client: Any, task_ids: list[str]) -> set[str]:
    """Which of ``task_ids`` have a message on a queue or held by a worker right now."""
    if not task_ids:
        return set()
    lists = queue_lists()
    found = client.eval(_FIND_MESSAGES, len(lists) + 1, *lists, keys.UNACKED_HASH, *task_ids)
    return {x.decode() if isinstance(x, bytes) else x for x in found}


def _job_pieces(client: Any, job_id: str, default_chunk_rows: int) -> dict[str, dict] | None:
    """Task id -> message spec of each chunk of the job not yet done; None when the job has ended or expired."""
    status, n, n_chunks, work_ms, per_chunk = client.hmget(
        keys.job(job_id), ["status", "n_rows", "n_chunks", "work_ms", "chunk_rows"]
    )
    if status is None or status.decode() in ("succeeded", "failed"):
        return None
    done = {int(c) for c in client.smembers(keys.job_done_chunks(job_id))}
    rows_per_chunk = int(per_chunk) if per_chunk else default_chunk_rows
    return {
        keys.chunk_task_id(job_id, k): chunk_spec(job_id, k, chunk_rows(int(n), rows_per_chunk, k), int(work_ms))
        for k in range(int(n_chunks))
        if k not in done
    }


def _batch_piece(client: Any, task_id: str) -> dict[str, dict] | None:
    result, spec = client.mget([keys.batch_result(task_id), keys.batch_spec(task_id)])
    if result is not None or spec is None:
        return None
    return {task_id: orjson.loads(spec)}


def sweep(client: Any, celery: Celery, s: Settings, now: float) -> SweepReport:
    """One pass: resend every piece of stalled work whose message is nowhere to be found."""
    report = SweepReport()
    stalled = client.zrangebyscore(keys.INFLIGHT, "-inf", now - s.visibility_timeout_s, start=0, num=SWEEP_LIMIT)
    report.stalled = len(stalled)
    pieces: dict[str, dict] = {}
    watched: list[bytes] = []
    for member in stalled:
        kind, _, ident = member.decode().partition(":")
        found = _job_pieces(client, ident, s.job_chunk_rows) if kind == "job" else _batch_piece(client, ident)
        if found is None:
            client.zrem(keys.INFLIGHT, member)
            report.finished += 1
            continue
        pieces.update(found)
        watched.append(member)
    alive = find_messages(client, list(pieces))
    report.alive = len(alive)
    for task_id, spec in pieces.items():
        if task_id not in alive:
            send_predict(celery, task_id, spec, spec["queue"])
            report.resent += 1
    if watched:
        # Each entry's clock starts again: a resent piece gets a full visibility timeout to show progress.
        client.zadd(keys.INFLIGHT, dict.fromkeys(watched, now), xx=True)
    if report.resent:
        client.hincrby(keys.LEDGER, "redispatched", report.resent)
        logger.warning("re-dispatched %d lost message(s) of %d stalled job(s)/task(s)", report.resent, report.stalled)
    return report


_stop = threading.Event()


def _run(hostname: str) -> None:
    s = get_settings()
    client = sync_client(s.redis_url)
    celery = make_app(s)  # its own app: this thread never shares a producer or connection with the consumer
    lock_s = max(1, int(s.redispatch_interval_s))
    while not _stop.wait(s.redispatch_interval_s):
        try:
            if client.set(keys.REDISPATCH_LOCK, hostname, nx=True, ex=lock_s):
                sweep(client, celery, s, time.time())
        except Exception as exc:  # Redis restarting: the next interval tries again.
            logger.debug("re-dispatch sweep failed: %s", exc)


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    threading.Thread(target=_run, args=(sender.hostname,), name="inferpool-redispatch", daemon=True).start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
