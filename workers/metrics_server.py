"""A worker's own ``/metrics``, its logging, and the task outcomes only Celery's signals see.

The worker's main process serves the sum of its group's multiprocess files (its
own and every prefork child's, see ``inferpool.telemetry``) on
``INFERPOOL_WORKER_METRICS_PORT``; if that port is taken (two workers on one
host) it serves on a free one. Either way the address goes into the worker's
heartbeat, from where the exporter's ``/targets`` hands it to Prometheus.

Celery's own log records go through inferpool's handler and formatter: the
``setup_logging`` receiver below tells Celery to leave logging alone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import Any
from urllib.parse import urlparse

from celery.signals import (
    celeryd_init,
    setup_logging,
    task_rejected,
    task_retry,
    task_unknown,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from inferpool import metrics, telemetry
from inferpool.records import HeartbeatField
from inferpool.settings import get_settings
from workers import heartbeat
from workers.watchdog import runs_tasks_in_process

logger = logging.getLogger(__name__)

_node: dict[str, str] = {}
_server: list[telemetry.MetricsServer] = []


@celeryd_init.connect
def _on_init(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    # The first moment the node name is known: it goes into every JSON log line. Logging is set up
    # here, not later, so the warnings of the worker's own start-up go through it too.
    if sender:
        _node["name"] = sender
    _logging()
    if get_settings().log_json and instance is not None:
        instance.quiet = True  # the start-up banner is a print, not a log record


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Connected at all, this receiver stops Celery from installing its own handlers.
    fields = {"worker": _node["name"]} if "name" in _node else None
    telemetry.setup_logging("worker", get_settings(), fields)
    # billiard's pool logger ("Process ... exited with signal 9") does not propagate and has no
    # handler, so Python's last-resort handler would print it as bare text.
    from billiard.util import get_logger as pool_logger

    pool = pool_logger()
    pool.propagate = True
    pool.setLevel(logging.WARNING)
    if not get_settings().log_task_events:
        # Celery's own two INFO lines per task ("received" in the main process, "succeeded" in the pool
        # process) follow INFERPOOL_LOG_TASK_EVENTS as ours do: thousands of lines a minute under load, and
        # formatting and writing them costs the main process CPU on every task. Failures log at ERROR still.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)


def advertised_host(bind: str, redis_url: str) -> str:
    """The address others should scrape: the bound one, or for a wildcard bind the interface that reaches Redis."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    target = urlparse(redis_url).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # UDP connect sends nothing; it only picks the route
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def loopback_only(advertised: str, redis_url: str) -> bool:
    """True when the metrics address is loopback although Redis is not: other hosts cannot scrape it."""
    target = urlparse(redis_url).hostname or "127.0.0.1"
    return _is_loopback(advertised) and not _is_loopback(target)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@worker_ready.connect
def _start_server(sender: Any = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    s = get_settings()
    consumer = getattr(sender, "task_consumer", None)
    metrics.init_worker_series(q.name for q in (consumer.queues if consumer else ()))
    collector = multiprocess.MultiProcessCollector(None)
    try:
        server = telemetry.serve(
            s.worker_metrics_port, [collector], s.api_host, include_process_registry=False, any_port_if_taken=True
        )
    except OSError as exc:  # no metrics is better than no worker
        logger.error("worker metrics server failed to start: %s", exc)
        return
    _server.append(server)
    host = advertised_host(s.api_host, s.redis_url)
    heartbeat.extra_fields[HeartbeatField.metrics] = f"{host}:{server.port}"
    if loopback_only(host, s.redis_url):
        # A worker on another host than Redis, with the default bind: Prometheus elsewhere cannot reach it.
        logger.warning(
            "worker metrics listen on %s only, unreachable from other hosts; set INFERPOOL_API_HOST=0.0.0.0 "
            "(or this host's address) so the scraper that reads /targets can reach them",
            host,
        )
    logger.info("worker metrics at %s/metrics", server.url)


@worker_shutdown.connect
def _stop_server(**_: Any) -> None:
    while _server:
        _server.pop().close()


@worker_process_init.connect
def _model_info(**_: Any) -> None:
    # Connected after workers.runtime's receiver (import order), so the model is loaded by now.
    from workers.runtime import get_runtime

    try:
        rt = get_runtime()
    except Exception:  # the load failure is logged by workers.runtime
        return
    metrics.MODEL_INFO.labels(version=rt.manifest.version, sha256=rt.manifest.sha256, runtime=rt.runtime).set(1)


@worker_ready.connect
def _model_info_in_process(sender: Any = None, **_: Any) -> None:
    # A threads pool has no pool process to init: its tasks share this process's model, loaded here (by
    # get_runtime) rather than by the first request.
    if runs_tasks_in_process(sender):
        _model_info()


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    telemetry.process_dead(pid or os.getpid())


def _queue_of(delivery_info: dict | None) -> str:
    return (delivery_info or {}).get("routing_key") or ""


@task_retry.connect
def _retried(request: Any = None, **_: Any) -> None:
    metrics.TASKS_COMPLETED.labels(queue=_queue_of(getattr(request, "delivery_info", None)), outcome="retry").inc()


@task_rejected.connect
@task_unknown.connect
def _rejected(message: Any = None, **_: Any) -> None:
    queue = _queue_of(getattr(message, "delivery_info", None))
    metrics.TASKS_COMPLETED.labels(queue=queue, outcome="rejected").inc()
