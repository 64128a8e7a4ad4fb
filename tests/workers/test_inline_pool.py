"""The online worker's threads pool: micro-batches run on the consumer's thread, everything else on the pool's."""

from __future__ import annotations

import threading

from celery import concurrency

from inferpool.publish import TASK_PREDICT, TASK_PREDICT_ONLINE
from workers.inline_pool import TaskPool


def _run_on(pool: TaskPool, task_name: str) -> threading.Thread:
    ran_on: list[threading.Thread] = []
    done = threading.Event()

    def target(*args):  # what Celery's tracer receives: (task name, id, request, body, content type, encoding)
        assert args[0] == task_name
        ran_on.append(threading.current_thread())
        return "ok"

    def callback(ret):
        assert ret == "ok"
        done.set()

    pool.on_apply(target, args=(task_name, "id", {}, b"", "application/json", "utf-8"), callback=callback)
    assert done.wait(5), f"{task_name} never finished"
    return ran_on[0]


def test_micro_batches_run_on_the_calling_thread_and_chunks_on_the_pool():
    pool = TaskPool(limit=2)
    try:
        assert _run_on(pool, TASK_PREDICT_ONLINE) is threading.current_thread()
        assert _run_on(pool, TASK_PREDICT) is not threading.current_thread()
    finally:
        pool.on_stop()


def test_the_worker_commands_threads_pool_is_this_one():
    import workers.app  # noqa: F401  (the worker command loads the app before it resolves --pool)

    assert concurrency.get_implementation("threads") is TaskPool
