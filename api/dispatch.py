"""Publishing predict tasks and routing their answers back to waiting requests.

Publishing goes through Celery's (synchronous) producer on one dedicated
thread, so the event loop never blocks on Redis and the producer is never
shared across threads. Answers to inline tasks come back on a per-process
Redis list, read by one supervised ``BLPOP`` loop that resolves futures by
task id; a reply for a task nobody waits for any more is simply dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from celery import Celery

from inferpool import codec, keys
from inferpool.publish import send_predict
from inferpool.redis_client import async_client, sync_client

logger = logging.getLogger(__name__)

# KEYS: pending marker, result, ledger, spec, in-flight set; ARGV: now, ttl, requests, spec JSON, in-flight member.
# Once per task (SET NX). The worker counts an outcome only if this marker exists, so a result that got here
# first is counted here: each request counts as accepted and as succeeded/failed exactly once, even when Redis
# fails between publish and mark. Unfinished, the task is kept (rows and all) for the re-dispatcher.
_MARK_PENDING = """
if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 0 end
redis.call('HINCRBY', KEYS[3], 'accepted', ARGV[3])
local r = redis.call('GET', KEYS[2])
if r then
  local outcome = cjson.decode(r)['error'] and 'failed' or 'succeeded'
  redis.call('HINCRBY', KEYS[3], outcome, ARGV[3])
else
  redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[2])
  redis.call('ZADD', KEYS[5], ARGV[1], ARGV[5])
end
return 1
"""
REPLY_POLL_S = 1
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class Reply:
    task_id: str
    predictions: np.ndarray | None
    model_version: str
    enqueued: float
    started: float
    finished: float
    error: str | None = None


def parse_reply(raw: bytes) -> Reply:
    d = orjson.loads(raw)
    preds = np.asarray(d["p"], dtype=np.int64) if "p" in d else None
    return Reply(
        d["id"], preds, d.get("v", ""), d.get("enq", 0.0), d.get("start", 0.0), d.get("end", 0.0), d.get("error")
    )


class Dispatcher:
    def __init__(self, celery: Celery, redis_url: str, result_ttl_s: int) -> None:
        # The publish thread needs the GIL while the event loop parses a burst of requests; at the default
        # 5 ms switch interval each publish could wait that long. 0.5 ms keeps publishing prompt.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.celery = celery
        self.instance = uuid.uuid4().hex[:12]
        self.reply_key = keys.reply_list(self.instance)
        self._ttl = result_ttl_s
        # Two publish lanes, each one thread (a producer is never shared across threads): micro-batches of
        # light rows never queue behind a burst of work tasks or job chunks being published.
        self._online_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-online")
        self._other_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._sync = sync_client(redis_url)
        self._blocking = async_client(redis_url, blocking=True)
        self._async = async_client(redis_url)
        self._background: set[asyncio.Task] = set()
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task | None = None
        self._stopping = False

    # --- publishing -----------------------------------------------------------
    async def publish(self, task_id: str, spec: dict[str, Any], queue: str) -> None:
        loop = asyncio.get_running_loop()
        lane = self._online_lane if queue == keys.QUEUE_ONLINE else self._other_lane
        await loop.run_in_executor(lane, send_predict, self.celery, task_id, spec, queue)

    async def _mark_pending(self, task_id: str, spec: dict[str, Any]) -> None:
        """Let GET /v1/jobs answer "queued" before the result exists, count the requests as accepted, and
        keep the task for the re-dispatcher until it finishes.

        Kept off the latency path: it runs beside the task, not before it.
        """
        try:
            await self._async.eval(
                _MARK_PENDING, 5, keys.batch_pending(task_id), keys.batch_result(task_id), keys.LEDGER,
                keys.batch_spec(task_id), keys.INFLIGHT,
                time.time(), self._ttl, spec["reqs"], orjson.dumps(spec), keys.inflight_batch(task_id),
            )  # fmt: skip
        except Exception as exc:
            logger.warning("could not mark task %s pending: %s", task_id, type(exc).__name__)

    async def publish_rows(
        self, rows: np.ndarray | None, work_ms: int, queue: str, reqs: int
    ) -> tuple[str, asyncio.Future]:
        """Send rows inline as one task (or, with ``rows=None``, only simulated work); the future gets its Reply."""
        task_id = secrets.token_hex(16)  # 128 random bits: it is also the pollable job id of the request
        spec: dict[str, Any] = {
            "id": task_id, "n": 0, "work_ms": work_ms, "reply": self.reply_key, "queue": queue, "reqs": reqs,
        }  # fmt: skip
        if rows is not None:
            spec.update(n=int(rows.shape[0]), rows=codec.rows_to_b64(rows))
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = fut
        try:
            await self.publish(task_id, spec, queue)
        except BaseException:
            self._waiting.pop(task_id, None)
            raise
        if reqs:  # the simulated-work half of a heavy request answers nobody's poll: nothing to mark
            marker = asyncio.get_running_loop().create_task(self._mark_pending(task_id, spec))
            self._background.add(marker)
            marker.add_done_callback(self._background.discard)
        return task_id, fut

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)

    # --- replies ------------------------------------------------------------------
    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(), name="reply-reader")

    async def _read_replies(self) -> None:
        while not self._stopping:
            try:
                item = await self._blocking.blpop([self.reply_key], timeout=REPLY_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarting: keep trying, requests time out on their own.
                logger.warning("reply reader: %s; retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                reply = parse_reply(item[1])
            except (orjson.JSONDecodeError, KeyError) as exc:
                logger.error("reply reader: unreadable reply (%s)", exc)
                continue
            fut = self._waiting.pop(reply.task_id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def close(self) -> None:
        self._stopping = True
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        await self._blocking.aclose()
        await self._async.aclose()
        self._sync.close()
        for lane in (self._online_lane, self._other_lane):
            lane.shutdown(wait=False, cancel_futures=True)
