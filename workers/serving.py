"""A worker serves only what it can: it consumes its queues only while its model loads.

A worker whose model directory is empty (or whose files do not match their manifest) used to take
messages and fail them, and Celery drops a failed message: of 40 one-call requests 19 timed out.
Now the gate below keeps such a worker out of its queues:

* Before the pool forks, the main process checks the model (``workers.runtime.check_model``: manifest,
  file, sha256). If the check fails, the consumer starts with its queues cancelled: the worker takes
  nothing, its heartbeat says ``ready=0`` (readiness counts only ready workers) and it checks again every
  ``INFERPOOL_MODEL_RETRY_S``, adding its queues back once the model is there.
* A pool process that cannot load the model raises :class:`CannotServe` from its task: a requeueing
  Reject, so the message goes back to its queue, never dropped. The main process sees it
  (``workers.delivery``) and closes the gate; as its own check had passed, it tries again with backoff
  (doubling up to ``MAX_BACKOFF_S``) until the model changes.

Everything here runs in the worker's main process, on its event loop (the consumer's timer), which is
where Celery's own ``add_consumer``/``cancel_consumer`` commands run too.

The same bootstep refuses a Redis that may evict keys (``inferpool.redis_fit``): the worker exits, naming
the setting, unless ``INFERPOOL_ALLOW_EVICTION=true``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from celery.exceptions import Reject, WorkerShutdown
from celery.signals import worker_init, worker_process_init

from inferpool import redis_fit
from inferpool.redis_client import sync_client
from inferpool.settings import get_settings
from workers.app import app
from workers.runtime import check_model, get_runtime

logger = logging.getLogger(__name__)

TICK_S = 1.0
MAX_BACKOFF_S = 60.0
# The worker's exit status when Redis may evict keys (EX_CONFIG in sysexits.h: a configuration error).
EXIT_REDIS_UNFIT = 78


class CannotServe(Reject):
    """Raised in a task whose process has no usable model: its message goes back to the queue (requeue)."""

    def __init__(self, reason: str | None = None, requeue: bool = True) -> None:
        super().__init__(reason, requeue)


@dataclass
class Gate:
    """Whether this worker consumes, and the queues it consumes when it does (its ``-Q``)."""

    ready: bool = True
    reason: str = ""
    queues: tuple[str, ...] = ()
    consumer: Any = None
    # Closes reported by pool processes while the main process's check passed: the backoff exponent.
    # Reset when the model changes (another version or file).
    failures: int = 0
    model: str | None = None
    next_try: float = 0.0

    def serving(self) -> tuple[str, ...]:
        return self.queues if self.ready else ()

    def check(self) -> str | None:
        """Check the model now; its identity when it passes, else None (and ``reason`` says why)."""
        try:
            m = check_model(get_settings())
        except Exception as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            return None
        return f"{m.version}:{m.runtime.sha256 or m.sha256}"

    def attach(self, consumer: Any) -> None:
        """The consumer (re)started: learn its queues the first time, and cancel them while closed."""
        self.consumer = consumer
        if not self.queues:
            self.queues = tuple(q.name for q in consumer.task_consumer.queues)
        if not self.ready:
            self._cancel()
            logger.error(
                "worker %s consumes nothing until its model loads (%s); checking every %g s",
                consumer.hostname, self.reason, get_settings().model_retry_s,
            )  # fmt: skip

    def close(self, reason: str) -> None:
        """A pool process could not load the model: stop taking messages, retry later with backoff."""
        self.reason = reason
        if not self.ready:
            return
        self.ready = False
        self.failures += 1
        delay = min(get_settings().model_retry_s * 2 ** (self.failures - 1), MAX_BACKOFF_S)
        self.next_try = time.monotonic() + delay
        if self.consumer is not None:
            self._cancel()
        logger.error("worker stops consuming %s: %s; checking again in %g s", ",".join(self.queues), reason, delay)

    def tick(self) -> None:
        """On the consumer's timer: while closed, check the model when due and reopen if it passes."""
        if self.ready or time.monotonic() < self.next_try:
            return
        self.next_try = time.monotonic() + get_settings().model_retry_s
        model = self.check()
        if model is None:
            return
        if model != self.model:
            self.failures, self.model = 0, model
        self.ready, self.reason = True, ""
        for q in self.queues:
            self.consumer.add_task_queue(q)
        logger.warning("model %s checks out: worker consumes %s again", model, ",".join(self.queues))

    def _cancel(self) -> None:
        # Unconditionally: before the event loop's first consume() no queue counts as "consuming" yet, but
        # each is selected and would be consumed then.
        for q in self.queues:
            self.consumer.cancel_task_queue(q)


gate = Gate()


class ModelGateStep(bootsteps.StartStopStep):
    """Consumer bootstep, after the task consumer exists and before the event loop starts consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "inferpool model gate"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        _refuse_evicting_redis(c.hostname)
        gate.attach(c)
        self.stop(c)
        self.tref = c.timer.call_repeatedly(TICK_S, gate.tick)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


app.steps["consumer"].add(ModelGateStep)


def _refuse_evicting_redis(hostname: str) -> None:
    """Checked on every (re)connection: a worker must not serve from a Redis that may evict its queues."""
    s = get_settings()
    client = sync_client(s.redis_url)
    try:
        redis_fit.check_policy(client, s.allow_eviction)
    except redis_fit.EvictionPolicyRefused as exc:
        logger.critical("worker %s will not run: %s", hostname, exc)
        raise WorkerShutdown(EXIT_REDIS_UNFIT) from exc
    finally:
        client.close()


@worker_init.connect
def _check_before_fork(**_: Any) -> None:
    """The first check, in the main process before the pool forks (its processes inherit the verdict)."""
    gate.model = gate.check()
    if gate.model is None:
        gate.ready = False
        gate.next_try = time.monotonic() + get_settings().model_retry_s


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    # No model at fork time: the first task reports it (CannotServe), if the gate ever lets one through.
    if not gate.ready:
        return
    # A failed load here would kill the child in a loop; log and let the first task report it.
    try:
        get_runtime()
    except Exception:
        logger.exception("model failed to load in worker process")
