"""Publishing predict tasks and routing their answers back to waiting requests.

Publishing is one ``LPUSH`` of the task message (``inferpool.publish``) on the
API's async Redis client, from the event loop: no thread, no kombu producer.
An inline task with callers is pushed and marked pending by one script, in
one round trip. Answers to inline tasks come back on a per-process Redis list,
read by one supervised ``BLPOP`` loop that resolves futures by task id; a
reply for a task nobody waits for any more is simply dropped.
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


class Dispatcher:
    def __init__(self, redis_url: str, result_ttl_s: int) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self.reply_key = keys.reply_list(self.instance)
        self._ttl = result_ttl_s
        self._blocking = async_client(redis_url, blocking=True)
        self._async = async_client(redis_url)
        self._publish_pending = PublishPending.register(self._async)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
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
        spec = inline_spec(task_id, work_ms, self.reply_key, queue, reqs)
        if rows is not None:
            spec["n"], spec["rows"] = int(rows.shape[0]), codec.rows_to_b64(rows)
        if model_version:
            spec["mv"] = model_version
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = fut
        try:
            # The simulated-work half of a heavy request answers nobody's poll: nothing to mark.
            if reqs:
                await self._publish_and_mark(task_id, spec, queue)
            else:
                await self.publish(task_id, spec, queue)
        except BaseException:
            self._waiting.pop(task_id, None)
            raise
        return task_id, fut

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)

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
        """The one reader of this process's reply list. Nothing it meets may end it: a reader gone quiet
        leaves every inline request to time out (504) while the workers answer."""
        while not self._stopping:
            try:
                item = await self._blocking.blpop([self.reply_key], timeout=REPLY_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarting: keep trying, requests time out on their own.
                logger.warning("reply reader: %s; retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if item is not None:
                self._deliver(item[1])

    def _deliver(self, raw: bytes) -> None:
        try:
            reply = decode_reply(raw)
            fut = self._waiting.pop(reply.task_id, None)
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
