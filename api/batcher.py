"""Adaptive micro-batching of light predict requests, in each API process.

Why at the front end: a Celery round trip costs 3-6 ms and a model call ~9 ms
whatever its size, so the win comes from turning many HTTP requests into one
task. Doing it in the API needs no extra hop and sees every request as it arrives.

The rule, greedy and load-adaptive:
* a batch leaves as soon as a send slot is free (``max_in_flight`` batches out
  at once, about the number of online worker processes), so at low load a
  request never waits for company; it only lets the event loop run a few
  turns first, so requests already received (a burst) join it;
* while every slot is busy, arrivals accumulate: batches grow with load;
* a batch also leaves when it reaches its size limit, or when its oldest
  request has waited ``max_wait`` (slots are a soft limit, waiting is not);
* the size limit comes from a running fit of task run time as ``a*n + b``
  (as BentoML does): the largest n with ``a*n + b`` within the latency budget.

Each caller's rows stay contiguous in the batch, and its answer is its slice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from api.dispatch import Dispatcher, Reply
from inferpool import keys, metrics
from inferpool.errors import PredictionFailed

logger = logging.getLogger(__name__)

# Event-loop turns the batcher yields while a burst is still being parsed.
ARRIVAL_TURNS = 4


class CostModel:
    """Least-squares fit of run time = a*rows + b with exponential forgetting."""

    def __init__(self, decay: float = 0.98, prior_a_s: float = 0.00005, prior_b_s: float = 0.01) -> None:
        self.decay = decay
        # Seed the sums with two virtual points on the prior line so the fit is defined from the start.
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        for n in (1.0, 512.0):
            self.observe(n, prior_b_s + prior_a_s * n)

    def observe(self, rows: float, seconds: float) -> None:
        d = self.decay
        self._w = self._w * d + 1
        self._sx = self._sx * d + rows
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + rows * rows
        self._sxy = self._sxy * d + rows * seconds

    def coefficients(self) -> tuple[float, float]:
        denom = self._w * self._sxx - self._sx**2
        if denom <= 1e-12:
            return 0.0, self._sy / max(self._w, 1e-9)
        a = (self._w * self._sxy - self._sx * self._sy) / denom
        a = max(a, 0.0)
        b = max((self._sy - a * self._sx) / self._w, 0.0)
        return a, b

    def max_rows(self, budget_s: float, cap: int) -> int:
        a, b = self.coefficients()
        if a <= 0:
            return cap
        return int(min(cap, max(1, (budget_s - b) / a)))


@dataclass
class Entry:
    rows: np.ndarray
    arrived: float
    future: asyncio.Future = field(repr=False)
    job_id: str | None = None
    version: str = ""  # a batch holds rows of one model version ("": the one `current` names)
    shadow: bool = False  # a copy for a shadow candidate: answers nobody, counts in no ledger


@dataclass(frozen=True)
class BatchAnswer:
    predictions: np.ndarray
    job_id: str
    model_version: str


class Batcher:
    def __init__(
        self, dispatcher: Dispatcher, max_rows: int, max_wait_s: float, budget_s: float, max_in_flight: int,
        reply_timeout_s: float, on_answer: Callable[[str, int, Reply | None, bool], None] | None = None,
    ) -> None:  # fmt: skip
        self.dispatcher = dispatcher
        # Called once per batch with (version, requests, reply or None on timeout, failed): per-version figures.
        self.on_answer = on_answer
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.budget_s = budget_s
        self.max_in_flight = max_in_flight
        self.reply_timeout_s = reply_timeout_s
        self.cost = CostModel()
        self._pending: deque[Entry] = deque()
        self._changed = asyncio.Event()
        self._in_flight = 0
        self._runner: asyncio.Task | None = None
        self._senders: set[asyncio.Task] = set()

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        for t in [self._runner, *self._senders]:
            if t:
                t.cancel()
        for e in self._pending:
            if not e.future.done():
                e.future.cancel()

    def submit(self, rows: np.ndarray, version: str = "", shadow: bool = False) -> Entry:
        """Queue rows for the next batch of ``version``; await ``entry.future`` for a BatchAnswer."""
        entry = Entry(
            rows=rows, arrived=time.monotonic(), future=asyncio.get_running_loop().create_future(),
            version=version, shadow=shadow,
        )  # fmt: skip
        self._pending.append(entry)
        self._changed.set()
        return entry

    def _limit(self) -> int:
        return self.cost.max_rows(self.budget_s, self.max_rows)

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._changed.clear()
                await self._changed.wait()
            await self._gather_arrived()
            limit = self._limit()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._in_flight >= self.max_in_flight and sum(len(e.rows) for e in self._pending) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(limit)
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _gather_arrived(self) -> None:
        """Give requests already read from sockets a few loop turns to reach the queue; costs microseconds."""
        for _ in range(ARRIVAL_TURNS):
            before = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == before:
                return

    def _take(self, limit: int) -> list[Entry]:
        """The oldest entry and the next ones of its version that fit; other versions keep their places."""
        batch = [self._pending.popleft()]
        version, rows = batch[0].version, len(batch[0].rows)
        others: list[Entry] = []
        while self._pending:
            e = self._pending[0]
            if e.version != version:
                others.append(self._pending.popleft())
                continue
            if rows + len(e.rows) > limit:
                break
            rows += len(e.rows)
            batch.append(self._pending.popleft())
        self._pending.extendleft(reversed(others))
        return batch

    async def _send(self, batch: list[Entry]) -> None:
        self._in_flight += 1
        try:
            await self._send_and_wait(batch)
        finally:
            self._in_flight -= 1
            self._changed.set()

    async def _send_and_wait(self, batch: list[Entry]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([e.rows for e in batch])
        now = time.monotonic()
        for e in batch:
            metrics.BATCHER_WAIT.observe(now - e.arrived)
        metrics.BATCHER_ROWS.observe(len(rows))
        try:
            task_id, fut = await self.dispatcher.publish_rows(
                rows, 0, keys.QUEUE_ONLINE, reqs=sum(not e.shadow for e in batch), model_version=batch[0].version
            )
        except Exception as exc:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        offset = 0
        for e in batch:
            e.job_id = f"{task_id}.{offset}.{len(e.rows)}"
            offset += len(e.rows)
        try:
            # asyncio.timeout, not wait_for(shield(...)): no extra task and future per batch; a cancelled
            # reply future is simply forgotten (the dispatcher drops a reply nobody waits for).
            async with asyncio.timeout(self.reply_timeout_s):
                reply: Reply = await fut
        except TimeoutError:
            # Callers time out on their own and get a job id to poll; free the slot.
            self.dispatcher.forget(task_id)
            if self.on_answer:
                self.on_answer(batch[0].version, len(batch), None, True)
            return
        self._deliver(batch, reply)

    def _deliver(self, batch: list[Entry], reply: Reply) -> None:
        version = batch[0].version
        if version and reply.predictions is not None and reply.model_version != version:
            # Never happens with inferpool's workers; an answer of another version is refused, not passed on.
            reply = Reply(reply.task_id, None, reply.model_version, reply.enqueued, reply.started, reply.finished,
                          f"answered by model version {reply.model_version}, routed to {version}")  # fmt: skip
        if self.on_answer:
            self.on_answer(version or reply.model_version, len(batch), reply, reply.predictions is None)
        if reply.predictions is None:
            err = PredictionFailed(f"model version {version or reply.model_version}: {reply.error or 'failed'}")
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(err)
            return
        self.cost.observe(len(reply.predictions), max(reply.finished - reply.started, 0.0))
        offset = 0
        for e in batch:
            n = len(e.rows)
            if not e.future.done():
                answer = BatchAnswer(reply.predictions[offset : offset + n], e.job_id or "", reply.model_version)
                e.future.set_result(answer)
            offset += n
