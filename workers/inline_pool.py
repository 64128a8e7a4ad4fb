"""The online worker's ``threads`` pool, with micro-batches run where their message arrived.

A micro-batch (``inferpool.predict_online``) spends microseconds in the compiled model and the rest in one
Redis round trip; handing it to a pool thread adds a thread's wake-up on the way in and the GIL changing
hands on the way out, on every light request's path. So it runs on the consumer's own thread, as Celery's
solo pool runs every task. Job chunks (thousands of rows, milliseconds each) still go to the pool's
threads: onnxruntime releases the GIL, and two chunks run on two cores at once.

The consumer does not take messages while a micro-batch runs on it, for a millisecond at a time; a batch
that hangs is ended with its worker by ``workers.watchdog``, as one on a pool thread would be.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.base import apply_target
from celery.concurrency.thread import TaskPool as ThreadTaskPool

from inferpool.publish import TASK_PREDICT_ONLINE


class TaskPool(ThreadTaskPool):
    """``--pool threads``, except that micro-batches run on the calling (consumer) thread."""

    def on_apply(
        self,
        target: Any,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Any = None,
        accept_callback: Any = None,
        **options: Any,
    ) -> Any:
        # Celery's request passes (task name, id, request, body, content type, encoding) to its tracer.
        if args and args[0] == TASK_PREDICT_ONLINE:
            return apply_target(target, args, kwargs, callback, accept_callback)
        return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
