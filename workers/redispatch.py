"""The re-dispatcher: a safety net under kombu's redelivery, for messages lost outright.

kombu's Redis transport takes a message with ``BRPOP`` and records it as
unacknowledged with a second command; a message popped at the instant Redis
stops is in neither place, so no worker and no visibility timeout will ever
bring it back (a Redis crash can also drop the last second of the AOF). The
work is not gone, though: a job's rows and an inline task's spec stay in
Redis until they finish.

Every accepted job and every inline task with a caller waits in
``keys.INFLIGHT``, scored by its last sign of progress. Every
``INFERPOOL_REDISPATCH_INTERVAL_S`` each worker tries a lock in Redis (its own
token, released by its holder alone); the holder looks at the entries with no
progress for a visibility timeout, and re-scores them, so a sweep right after
finds nothing to do. Each unfinished piece whose message is neither on a queue nor held by a worker (one
atomic look at both) is published again under the same task id. Results are
idempotent, so a copy that turns out to have been alive after all finishes as
a counted duplicate; nothing is ever resent while its message can still run.

The short pass is for micro-batches and job chunks (``keys.SHORT_QUEUES``), which run for milliseconds
while the visibility timeout is sized for the work queue's longest task (60 s). The online worker keeps no
unacked record of them (``workers.delivery``), so a whole online worker killed (OOM, a lost host) leaves its
batches on no queue and in no hash: every half ``INFERPOOL_ONLINE_REDELIVERY_S`` the lock's holder resends
the short pieces with no progress for that long that are nowhere to be found (:func:`sweep_short`), and a
light caller waits seconds, not a minute. Short-queue messages that a worker with an unacked record (a
``--role all`` worker) held when it died are put back from kombu's hash by :func:`restore_held`, run by
every worker on the same clock.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from celery.signals import worker_ready

from inferpool import keys
from inferpool.publish import send_predict
from inferpool.records import ENDED, InflightEntry, InflightKind, JobField, LedgerField, chunk_rows, chunk_spec
from inferpool.redis_client import sync_client
from inferpool.scripts import FindMessages, ReleaseLock, RestoreHeld
from inferpool.settings import Settings, get_settings
from workers.ticker import Ticker

logger = logging.getLogger(__name__)

# At most this many stalled entries, and about this many unfinished pieces, per sweep; the rest wait
# for the next one.
SWEEP_LIMIT = 200
MAX_PIECES = 2000
# Messages read per script call, so that a scan never holds Redis for long: measured here, a queue of
# 20,000 inline messages of 64 rows (10 KB each) took 0.8 s to scan in one script, ~9 ms per page of 250.
SCAN_PAGE = 250
# How long a pass waits before it looks again at the pieces it found nowhere: a message just taken by a worker
# without an unacked record shows progress (or finishes) within milliseconds.
SECOND_LOOK_S = 0.5


@dataclass
class SweepReport:
    stalled: int = 0
    finished: int = 0  # entries whose work had ended or expired: dropped from the set
    alive: int = 0  # pieces left alone: still queued, held by a worker, or finished during the look
    resent: int = 0


def find_messages(client: redis.Redis, task_ids: list[str], queues: tuple[str, ...] = keys.ALL_QUEUES) -> set[str]:
    """Which of ``task_ids`` have a message on one of ``queues`` or held (unacked) by a worker.

    Lists are read page by page from the newest end, queues before the unacked hash: a message that
    stays queued only moves towards the end still to be read, and one taken meanwhile is unacked by the
    time that hash is read. A message missed all the same (put back from the unacked hash in the
    middle of the scan) is sent again and finishes as a counted duplicate: never a loss.
    """
    wanted = set(task_ids)
    found: set[str] = set()
    find = FindMessages.register(client)
    places = [(lst, "list") for q in queues for lst in keys.priority_lists(q)] + [(keys.UNACKED_HASH, "hash")]
    for key, kind in places:
        start = 0
        while wanted and start >= 0:
            reply = find(keys=[key], args=[kind, start, SCAN_PAGE, *wanted])
            start = int(reply[0])
            hits = {x.decode() if isinstance(x, bytes) else x for x in reply[1:]}
            found |= hits
            wanted -= hits
    return found


def _job_pieces(client: redis.Redis, job_id: str, default_chunk_rows: int) -> dict[str, dict] | None:
    """Task id -> message spec of each chunk of the job not yet done; None when the job has ended or expired."""
    status, n, n_chunks, work_ms, per_chunk, version = client.hmget(
        keys.job(job_id),
        [
            JobField.status,
            JobField.n_rows,
            JobField.n_chunks,
            JobField.work_ms,
            JobField.chunk_rows,
            JobField.model_version,
        ],
    )
    if None in (status, n, n_chunks, work_ms) or status.decode() in ENDED:
        return None
    done = {int(c) for c in client.smembers(keys.job_done_chunks(job_id))}
    rows_per_chunk = int(per_chunk) if per_chunk else default_chunk_rows
    mv = version.decode() if version else None
    return {
        keys.chunk_task_id(job_id, k): chunk_spec(job_id, k, chunk_rows(int(n), rows_per_chunk, k), int(work_ms), mv)
        for k in range(int(n_chunks))
        if k not in done
    }


def _batch_piece(client: Any, task_id: str) -> dict[str, dict] | None:
    result, spec = client.mget([keys.batch_result(task_id), keys.batch_spec(task_id)])
    if result is not None or spec is None:
        return None
    return {task_id: orjson.loads(spec)}


def _finished(client: Any, spec: dict) -> bool:
    if spec.get("job"):
        return bool(client.sismember(keys.job_done_chunks(spec["job"]), spec["chunk"]))
    return bool(client.exists(keys.batch_result(spec["id"])))


def sweep(client: Any, s: Settings, now: float) -> SweepReport:
    """One pass: resend every piece of work stalled for a visibility timeout whose message is nowhere."""
    cutoff = now - s.visibility_timeout_s
    stalled = client.zrangebyscore(keys.INFLIGHT, "-inf", cutoff, start=0, num=SWEEP_LIMIT)
    return _resend_lost(client, s, now, cutoff, stalled, None)


def sweep_short(client: Any, s: Settings, now: float) -> SweepReport:
    """The short pass: the same for micro-batches and job chunks (``keys.SHORT_QUEUES``), stalled for
    ``online_held_s``. Work older than a visibility timeout is the long pass's; of the rest, the newest first,
    so that a backlog of old entries does not hide a batch that has just stalled."""
    cutoff = now - s.online_held_s
    stalled = client.zrevrangebyscore(
        keys.INFLIGHT, cutoff, f"({now - s.visibility_timeout_s}", start=0, num=SWEEP_LIMIT
    )
    return _resend_lost(client, s, now, cutoff, stalled, keys.SHORT_QUEUES)


def _resend_lost(
    client: Any, s: Settings, now: float, cutoff: float, stalled: list[bytes], queues: frozenset[str] | None
) -> SweepReport:
    """Resend the pieces of ``stalled`` entries (of ``queues`` only, when given) that are on no queue and held
    by no worker; entries with no such piece are left as they are, for the pass they belong to."""
    report = SweepReport(stalled=len(stalled))
    pieces: dict[str, dict] = {}
    owner: dict[str, bytes] = {}  # piece's task id -> its in-flight entry
    for member in stalled:
        if len(pieces) >= MAX_PIECES:
            break
        entry = InflightEntry.decode(member)
        if entry is None:
            found = None
        elif entry.kind is InflightKind.job:
            found = _job_pieces(client, entry.ident, s.job_chunk_rows)
        else:
            found = _batch_piece(client, entry.ident)
        if found is None:
            client.zrem(keys.INFLIGHT, member)
            report.finished += 1
            continue
        if queues is not None:
            found = {task_id: spec for task_id, spec in found.items() if spec["queue"] in queues}
        pieces.update(found)
        owner.update(dict.fromkeys(found, member))
    lost = _nowhere(client, pieces)
    report.alive = len(pieces) - len(lost)
    if lost:
        # A second look: a worker that keeps no unacked record holds the message it has just taken in memory
        # alone, until its task shows progress (a chunk's start, a waited batch's mark) or finishes.
        time.sleep(SECOND_LOOK_S)
        scores = client.zmscore(keys.INFLIGHT, [owner[t] for t in lost])
        lost = _nowhere(client, {t: pieces[t] for t, sc in zip(lost, scores, strict=True) if sc and sc <= cutoff})
    for task_id in lost:
        send_predict(client, task_id, pieces[task_id], pieces[task_id]["queue"])
    report.resent = len(lost)
    if owner:
        # Each entry's clock starts again: a resent piece gets a full timeout to show progress.
        client.zadd(keys.INFLIGHT, dict.fromkeys(set(owner.values()), now), xx=True)
    if report.resent:
        client.hincrby(keys.LEDGER, LedgerField.redispatched, report.resent)
        logger.warning("re-dispatched %d lost message(s) of %d stalled job(s)/task(s)", report.resent, report.stalled)
    return report


def _nowhere(client: Any, pieces: dict[str, dict]) -> list[str]:
    """The pieces that are on no queue, held by no worker and not finished."""
    if not pieces:
        return []
    alive = find_messages(client, list(pieces), tuple({spec["queue"] for spec in pieces.values()}))
    # Finished during the scan (taken, run and acked before the unacked hash was read): not lost.
    return [t for t, spec in pieces.items() if t not in alive and not _finished(client, spec)]


def _queue_list(message: dict, queue: str) -> str:
    """The list kombu would put ``message`` back on: its queue's, at the priority step of the message."""
    try:
        priority = max(0, min(int(message["properties"]["priority"]), keys.PRIORITY_STEPS[-1]))
    except (KeyError, TypeError, ValueError):
        priority = 0
    step = max(p for p in keys.PRIORITY_STEPS if p <= priority)
    return keys.priority_lists(queue)[keys.PRIORITY_STEPS.index(step)]


def restore_held(client: Any, now: float, held_s: float, queues: frozenset[str] = keys.SHORT_QUEUES) -> int:
    """Put back on their queues the messages of ``queues`` that a worker took over ``held_s`` ago and never
    acked, as kombu's restore does after the visibility timeout (flagged redelivered, to the consuming end).

    Any number of workers may run this at once: each message goes back once (:class:`RestoreHeld`). A task
    that was still running after all finishes twice, the second time as a counted duplicate.
    """
    tags = client.zrangebyscore(keys.UNACKED_INDEX, "-inf", now - held_s, start=0, num=SWEEP_LIMIT)
    if not tags:
        return 0
    restore, restored = RestoreHeld.register(client), 0
    for tag, raw in zip(tags, client.hmget(keys.UNACKED_HASH, tags), strict=True):
        if raw is None:
            continue
        try:
            message, _exchange, routing_key = orjson.loads(raw)
            message["headers"]["redelivered"] = True
            message["properties"]["delivery_info"]["redelivered"] = True
        except (ValueError, TypeError, KeyError):
            continue  # not a message of ours to judge: kombu's own restore handles it
        if routing_key not in queues:
            continue
        restored += restore(keys=[keys.UNACKED_HASH, keys.UNACKED_INDEX, _queue_list(message, routing_key)],
                            args=[tag, raw, orjson.dumps(message)])  # fmt: skip
    if restored:
        logger.warning("put back %d message(s) held over %g s by a worker that never acked them", restored, held_s)
    return restored


# Longer than any sweep (a few pages of scans): a holder that dies mid-sweep holds the others off this long.
LOCK_TTL_S = 60


class SweepLock:
    """One sweep at a time across workers: SET NX with a token of this holder's own, released by it alone."""

    def __init__(self, client: Any, hostname: str) -> None:
        self.client = client
        self.token = f"{hostname}:{uuid.uuid4().hex}"
        self._release = ReleaseLock.register(client)

    def acquire(self) -> bool:
        return bool(self.client.set(keys.REDISPATCH_LOCK, self.token, nx=True, ex=LOCK_TTL_S))

    def release(self) -> bool:
        """True if the lock was still ours (and is now free)."""
        return bool(self._release(keys=[keys.REDISPATCH_LOCK], args=[self.token]))


_ticker = Ticker("inferpool-redispatch")
_restorer = Ticker("inferpool-restore-held")


Pass = Callable[[Any, Settings, float], SweepReport]


def _sweep_if_first(lock: SweepLock, s: Settings, one_pass: Pass) -> None:
    if lock.acquire():
        try:
            one_pass(lock.client, s, time.time())
        finally:
            lock.release()


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    s = get_settings()
    lock = SweepLock(sync_client(s.redis_url), sender.hostname)
    _ticker.start(s.redispatch_interval_s, lambda: _sweep_if_first(lock, s, sweep))
    client = sync_client(s.redis_url)
    short_lock = SweepLock(client, sender.hostname)

    def _short() -> None:
        restore_held(client, time.time(), s.online_held_s)
        _sweep_if_first(short_lock, s, sweep_short)

    _restorer.start(s.online_held_s / 2, _short)
