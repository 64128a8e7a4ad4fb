"""``inferpool scaler``: flags, and building the daemon from settings.

Heavy imports (Celery, prometheus_client) happen when the command runs, not when ``inferpool`` builds
its parser.
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import Any

from inferpool.settings import Settings, get_settings

logger = logging.getLogger(__name__)

ACTUATORS = ("celery", "process", "compose", "external")
POLICY_NAMES = ("erlang", "tutorial")


def add_scaler_command(sub: Any) -> None:
    """Register ``inferpool scaler`` on the ``inferpool`` subparsers."""
    p = sub.add_parser("scaler", help="grow and shrink the work pool to hold a queue-wait target")
    p.add_argument("--dry-run", action="store_true", default=None, help="decide and log, change nothing")
    p.add_argument("--min", type=int, help="fewest processes (default INFERPOOL_WORK_CONCURRENCY_MIN)")
    p.add_argument("--max", type=int, help="most processes (default INFERPOOL_WORK_CONCURRENCY_MAX)")
    p.add_argument("--target-wait", type=float, help="p95 queue wait target in seconds (default 0.1)")
    p.add_argument("--actuator", choices=ACTUATORS, help="celery: resize pools; process: also start workers here; "
                   "compose: docker compose --scale; external: decide only, KEDA/HPA acts on the metric "
                   "(default INFERPOOL_SCALER_ACTUATOR)")  # fmt: skip
    p.add_argument("--policy", choices=POLICY_NAMES, help="erlang (default) or the tutorial's +-1 baseline")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.set_defaults(fn=run_scaler)


def settings_from_args(ns: argparse.Namespace, base: Settings | None = None) -> Settings:
    """The settings with the command line's overrides applied (argparse checked their types and choices)."""
    base = base or get_settings()
    update = {
        "scaler_dry_run": ns.dry_run,
        "work_concurrency_min": ns.min,
        "work_concurrency_max": ns.max,
        "scaler_wait_target_s": ns.target_wait,
        "scaler_actuator": ns.actuator,
        "scaler_policy": ns.policy,
    }
    return base.model_copy(update={k: v for k, v in update.items() if v is not None})


def make_actuator(s: Settings) -> Any:
    from scaler.actuators import PoolActuator, ProcessActuator
    from scaler.replicas import ComposeActuator, ExternalActuator

    if s.scaler_actuator == "compose":
        # Each replica starts `inferpool worker --role work` at work_concurrency_min processes.
        return ComposeActuator(s.scaler_compose_service, max(1, s.work_concurrency_min), s.scaler_compose_file)
    if s.scaler_actuator == "external":
        return ExternalActuator()
    from inferpool.celery_config import make_celery

    pool = PoolActuator(make_celery(s).control, s.worker_max_procs)
    if s.scaler_actuator == "process":
        return ProcessActuator(pool, socket.gethostname(), s.scaler_worker_prefix)
    return pool


def start_metrics(s: Settings, client: Any, own: Any) -> Any:
    """The scaler's metrics beside the cluster exporter's, on ``scaler_metrics_port``; None if it cannot bind."""
    from inferpool.exporter import start_cluster_exporter

    try:
        return start_cluster_exporter(s, client, extra=[own])
    except OSError as exc:
        logger.warning("metrics port %d unavailable (%s); running without /metrics", s.scaler_metrics_port, exc)
        return None


def build(s: Settings) -> Any:
    from inferpool.redis_client import sync_client
    from scaler.daemon import Scaler, policy_config
    from scaler.load_signal import SignalReader

    client = sync_client(s.redis_url)
    reader = SignalReader(client, s.scaler_queue, s.scaler_worker_prefix)
    return Scaler(
        client,
        reader,
        make_actuator(s),
        policy_config(s),
        s.scaler_policy,
        dry_run=s.scaler_dry_run,
        tick_s=s.scaler_tick_s,
    )


def run_scaler(ns: argparse.Namespace) -> int:
    from inferpool import telemetry

    s = settings_from_args(ns)
    telemetry.setup_logging("scaler", s)
    scaler = build(s)
    server = start_metrics(s, scaler.client, scaler.metrics)
    try:
        scaler.run(once=ns.once)
    finally:
        if server is not None:
            (getattr(server, "close", None) or server.shutdown)()
    return 0
