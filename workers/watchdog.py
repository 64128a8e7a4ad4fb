"""The hard time limit of a worker whose tasks run in its own process (the online worker's ``threads`` pool).

Celery enforces ``task_time_limit`` only in a prefork pool, by killing the pool process and putting the
message back. In a threads pool a task past the limit cannot be stopped on its own, so it ends the whole
worker: its supervisor (``inferpool up``, compose, Kubernetes) starts a fresh one, and the messages it held
come back after ``INFERPOOL_ONLINE_REDELIVERY_S`` (``workers.redispatch.restore_held``), the hung one
included, as prefork puts back a task killed at the limit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.signals import worker_ready
from celery.worker import state as worker_state

from inferpool.settings import get_settings
from workers.ticker import Ticker

logger = logging.getLogger(__name__)

EXIT_TASK_OVERDUE = 75  # EX_TEMPFAIL: start it again
CHECK_EVERY_S = 1.0


def runs_tasks_in_process(consumer: Any) -> bool:
    """Whether this worker's tasks run in its own process (a threads pool) rather than in pool processes."""
    return isinstance(getattr(consumer, "pool", None), ThreadTaskPool)


def overdue(requests: Iterable[Any], now: float, limit_s: float) -> list[Any]:
    """The running requests started over ``limit_s`` ago (``time_start`` is epoch seconds, set on accept)."""
    return [r for r in requests if r.time_start and now - r.time_start > limit_s]


def _check(limit_s: float) -> None:
    late = overdue(list(worker_state.active_requests), time.time(), limit_s)
    if not late:
        return
    r = late[0]
    logger.critical(
        "task %s (%s) has run %.0f s, past the %g s time limit: ending this worker so that a fresh one runs "
        "its messages again", r.id, r.name, time.time() - r.time_start, limit_s,
    )  # fmt: skip
    logging.shutdown()
    os._exit(EXIT_TASK_OVERDUE)


_ticker = Ticker("inferpool-watchdog")


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    if runs_tasks_in_process(sender):
        limit_s = float(get_settings().task_time_limit_s)
        _ticker.start(CHECK_EVERY_S, lambda: _check(limit_s))
