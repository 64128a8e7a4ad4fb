"""Flower, always behind basic auth, and never shown a row of request data.

``run_flower`` refuses to start without ``INFERPOOL_FLOWER_USER`` and
``INFERPOOL_FLOWER_PASSWORD`` and hands them to Flower through the environment
(not argv, which ``ps`` shows). Flower 2.2 still answers ``/metrics`` and
``/healthcheck`` without credentials; they carry task counts and names, no
arguments. Its UI and REST API answer 401 to anonymous callers.

Task arguments: the API publishes with ``argsrepr="(rows=N, work_ms=W)"``, so
task events (what Flower's task list shows) carry sizes only. But Celery's
``active``, ``reserved``, ``scheduled`` and ``query_task`` inspect commands
(the first three called by Flower when one worker is opened, the last by anyone
on the broker who knows a task id) reply with the raw arguments (our rows,
base64). The worker imports this module and re-registers those four commands
to reply with the argsrepr instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.worker import control
from celery.worker import state as worker_state

from inferpool.settings import get_settings


class FlowerCredentialsMissing(SystemExit):
    pass


def flower_env() -> dict[str, str]:
    s = get_settings()
    if not s.flower_user or s.flower_password is None or not s.flower_password.get_secret_value():
        raise FlowerCredentialsMissing(
            "Flower needs credentials: set INFERPOOL_FLOWER_USER and INFERPOOL_FLOWER_PASSWORD"
        )
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_UNAUTHENTICATED_API"}
    # Flower keeps its own metrics in its default registry; a multiprocess directory
    # inherited from `inferpool up` would only scatter its files among other groups'.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    # Tornado leaves logging alone; _main below gives Flower inferpool's handler (JSON lines when set).
    env["FLOWER_LOGGING"] = "none"
    return env


def run_flower(port: int | None, address: str | None) -> int:
    s = get_settings()
    env = flower_env()
    argv = [
        sys.executable, "-m", "workers.flower", "-A", "workers.app:app", "flower",
        f"--port={port or s.flower_port}", f"--address={address or s.api_host}",
        # Flower would otherwise switch task events back on in every worker, every few seconds.
        f"--enable_events={s.task_events}",
    ]  # fmt: skip
    os.execve(argv[0], argv, env)
    return 0  # not reached


def _main(argv: list[str]) -> int:
    """``python -m workers.flower <celery arguments>``: Celery's command line with inferpool's logging."""
    from celery.bin.celery import main as celery_main

    from inferpool import telemetry

    telemetry.setup_logging("flower", get_settings())
    sys.argv = ["celery", *argv]
    return celery_main()


# --- what a worker tells Flower about its tasks: sizes, never rows -------------------------


@control.inspect_command(alias="dump_active")
def active(state: Any, safe: bool = True, **kwargs: Any) -> list[dict]:
    """List of tasks currently being executed (arguments as their argsrepr)."""
    return [r.info(safe=True) for r in state.tset(worker_state.active_requests)]


@control.inspect_command(alias="dump_reserved")
def reserved(state: Any, **kwargs: Any) -> list[dict]:
    """List of currently reserved tasks, not including scheduled/active (arguments as their argsrepr)."""
    waiting = state.tset(worker_state.reserved_requests) - state.tset(worker_state.active_requests)
    return [r.info(safe=True) for r in waiting]


@control.inspect_command(variadic="ids", signature="[id1 [id2 [... [idN]]]]")
def query_task(state: Any, ids: Any, **kwargs: Any) -> dict[str, tuple[str, dict]]:
    """Query for task information by id (arguments as their argsrepr)."""
    wanted = [ids] if isinstance(ids, str) else list(ids or ())
    found = {}
    for task_id in wanted:
        req = worker_state.requests.get(task_id)
        if req is not None:
            found[req.id] = (_state_of(req), req.info(safe=True))
    return found


def _state_of(req: Any) -> str:
    if req in worker_state.active_requests:
        return "active"
    if req in worker_state.reserved_requests:
        return "reserved"
    return "scheduled" if req in worker_state.scheduled_requests else "ready"


@control.inspect_command(alias="dump_schedule")
def scheduled(state: Any, **kwargs: Any) -> list[dict]:
    """List of currently scheduled ETA/countdown tasks (arguments as their argsrepr)."""
    out = []
    for waiting in state.consumer.timer.schedule.queue:
        try:
            req = waiting.entry.args[0]
        except (IndexError, TypeError):
            continue
        if hasattr(req, "info"):
            eta = req.eta.isoformat() if getattr(req, "eta", None) else None
            out.append({"eta": eta, "priority": waiting.priority, "request": req.info(safe=True)})
    return out


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
