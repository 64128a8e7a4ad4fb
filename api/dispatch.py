"""Publishing predict tasks and routing their answers back to waiting requests.

Publishing is one ``LPUSH`` of the task message (``inferpool.publish``) on the
API's async Redis client, from the event loop: no thread, no kombu producer.
An inline task with callers is pushed and marked pending by one script, in
one round trip. Answers to inline tasks are published on a per-process Redis
channel, read by one supervised subscriber that resolves futures by task id; a
reply for a task nobody waits for any more is simply dropped.

Why a channel rather than a list read by ``BLPOP``: a ``BLPOP`` has to be sent
again after every reply, one more write a request from this process and a
blocked-client wake-up in Redis. A subscription stays put. What a list gave,
replies kept while the reader reconnects, comes from the result key instead:
the worker's script writes the reply there in the same step as it publishes it,
so once a second the reader reads the result keys of the requests that have
waited over ``RECOVER_AFTER_S`` (one ``MGET``, only when there are some) and
delivers whatever a gap in the subscription made it miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from typing import Any

import numpy as np
import orjson

from inferpool import codec, keys, metrics
from inferpool.errors import BrokerUnavailable
from inferpool.publish import BROKER_ERRORS, task_message
from inferpool.records import Reply, decode_reply, inflight_batch, inline_spec
from inferpool.redis_client import async_client
from inferpool.scripts import PublishPending

logger = logging.getLogger(__name__)

REPLY_POLL_S = 1
# A request waiting this long has its result key read once a second, in case its reply was published while the
# subscription was down (redis-py reconnects a subscriber silently).
RECOVER_AFTER_S = 1.0


class Dispatcher:
    def __init__(self, redis_url: str, result_ttl_s: int) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self.reply_channel = keys.reply_channel(self.instance)
        self._ttl = result_ttl_s
        self._blocking = async_client(redis_url, blocking=True)
        self._async = async_client(redis_url)
        self._publish_pending = PublishPending.register(self._async)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._since: dict[str, float] = {}  # task id -> when its caller began waiting (monotonic)
        self._reader: asyncio.Task | None = None
        self._stopping = False

    # --- publishing -----------------------------------------------------------
    async def publish(self, task_id: str, spec: dict[str, Any], queue: str) -> None:
        """Put one task on its queue; :class:`BrokerUnavailable` when Redis cannot be reached."""
        await self.publish_many([(task_id, spec)], queue)

    async def publish_many(self, tasks: list[tuple[str, dict[str, Any]]], queue: str) -> None:
        """Put tasks on one queue in one round trip (a job's chunks), in order."""
        messages = [task_message(task_id, spec, queue) for task_id, spec in tasks]
        try:
            await self._async.lpush(queue, *messages)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
        metrics.TASKS_ENQUEUED.labels(queue=queue).inc(len(messages))

    async def _publish_and_mark(self, task_id: str, spec: dict[str, Any], queue: str) -> None:
        """Publish, let GET /v1/jobs answer "queued" before the result exists, count the requests as accepted,
        and keep the task for the re-dispatcher until it finishes: one script, one round trip."""
        message = task_message(task_id, spec, queue)
        try:
            await self._publish_pending(
                keys=[queue, keys.batch_pending(task_id), keys.batch_result(task_id), keys.LEDGER,
                      keys.batch_spec(task_id), keys.INFLIGHT],
                args=[message, time.time(), self._ttl, spec["reqs"], orjson.dumps(spec), inflight_batch(task_id)],
            )  # fmt: skip
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
        metrics.TASKS_ENQUEUED.labels(queue=queue).inc()

    async def publish_rows(
        self, rows: np.ndarray | None, work_ms: int, queue: str, reqs: int, model_version: str | None = None
    ) -> tuple[str, asyncio.Future]:
        """Send rows inline as one task (or, with ``rows=None``, only simulated work); the future gets its Reply.

        ``model_version``: the version the worker must run (``mv``); none means the one ``current`` names.
        """
        task_id = secrets.token_hex(16)  # 128 random bits: it is also the pollable job id of the request
        spec = inline_spec(task_id, work_ms, self.reply_channel, queue, reqs)
        if rows is not None:
            spec["n"], spec["rows"] = int(rows.shape[0]), codec.rows_to_b64(rows)
        if model_version:
            spec["mv"] = model_version
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = fut
        self._since[task_id] = time.monotonic()
        try:
            # The simulated-work half of a heavy request answers nobody's poll: nothing to mark.
            if reqs:
                await self._publish_and_mark(task_id, spec, queue)
            else:
                await self.publish(task_id, spec, queue)
        except BaseException:
            self.forget(task_id)
            raise
        return task_id, fut

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)
        self._since.pop(task_id, None)

    # --- replies ------------------------------------------------------------------
    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(), name="reply-reader")
        self._reader.add_done_callback(self._reader_ended)

    def _reader_ended(self, task: asyncio.Task) -> None:
        """Supervision: the reader ends only at close(); anything else starts it again."""
        if self._stopping or task.cancelled():
            return
        logger.error("reply reader ended unexpectedly (%r); starting it again", task.exception())
        self.start()

    async def _read_replies(self) -> None:
        """The one reader of this process's reply channel. Nothing it meets may end it: a reader gone quiet
        leaves every inline request to time out (504) while the workers answer."""
        recovered_at = time.monotonic()
        while not self._stopping:
            pubsub = self._blocking.pubsub()
            try:
                await pubsub.subscribe(self.reply_channel)
                while not self._stopping:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=REPLY_POLL_S)
                    if msg is not None and msg["type"] == "message":
                        self._deliver(msg["data"])
                    if time.monotonic() - recovered_at >= RECOVER_AFTER_S:
                        recovered_at = time.monotonic()
                        await self._recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarting: keep trying, requests time out on their own.
                logger.warning("reply reader: %s; retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _recover(self) -> None:
        """Deliver the replies of requests waiting over RECOVER_AFTER_S that are already in their result keys."""
        cutoff = time.monotonic() - RECOVER_AFTER_S
        stale = [task_id for task_id, since in self._since.items() if since < cutoff]
        if not stale:
            return
        for raw in await self._async.mget([keys.batch_result(task_id) for task_id in stale]):
            if raw is not None:
                self._deliver(raw)

    def _deliver(self, raw: bytes) -> None:
        try:
            reply = decode_reply(raw)
            fut = self._waiting.pop(reply.task_id, None)
            self._since.pop(reply.task_id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        except Exception:  # whatever a reply holds, it is dropped, logged (not its content), and reading goes on
            logger.exception("reply reader: dropped an unreadable reply of %d bytes", len(raw))

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
