"""Starting a Celery worker the inferpool way (the command behind ``inferpool worker``)."""

from __future__ import annotations

import os
import sys

from inferpool.settings import get_settings


def worker_argv(role: str, queues: list[str], concurrency: int, name: str | None) -> list[str]:
    s = get_settings()
    # The work pool stays prefork: the scaler grows and shrinks it, and its long tasks need hard time limits.
    pool = s.online_pool if role == "online" else "prefork"
    return [
        sys.executable, "-m", "celery", "-A", "workers.app:app", "worker",
        "--pool", pool, "-c", str(concurrency), "-Q", ",".join(queues),
        "-n", name or f"{role}@%h", "--without-gossip", "--without-mingle",
        "--loglevel", s.log_level,
    ]  # fmt: skip


def run_worker(role: str, queues: list[str], concurrency: int, name: str | None) -> int:
    # exec: the worker becomes this process, so SIGTERM from a supervisor reaches Celery directly
    # and starts its warm shutdown (finish running tasks, then exit).
    argv = worker_argv(role, queues, concurrency, name)
    os.execv(argv[0], argv)
    return 0  # not reached
