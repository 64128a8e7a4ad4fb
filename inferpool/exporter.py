"""Cluster-wide metrics, read from Redis at scrape time and exported once.

API processes and workers export what they did themselves. What belongs to the
whole cluster lives in Redis, and would double count if every process exported
it: queue depth and oldest age, unacknowledged messages, redeliveries, workers
(from their heartbeats), the job ledger, input drift and realised accuracy.
``ClusterCollector`` reads all of it on each scrape (the queue snapshot, one
MULTI/EXEC for the rest, and the drift report it shares with the drift route,
``inferpool.drift.cache``) and builds fresh metric families, so a worker that
goes away simply stops appearing: no stale labelled series to clean up.

It runs in the scaler daemon (``start_cluster_exporter``, on
``INFERPOOL_SCALER_METRICS_PORT``) or alone as ``inferpool exporter``. The same
HTTP server answers ``/targets`` with the live workers' metrics addresses in
Prometheus' ``http_sd_configs`` format, so one scrape configuration finds every
worker whatever its port and however many the scaler starts. ``/keda`` answers KEDA's
``metrics-api`` scaler without Prometheus: ``{"desired_processes": N, "oldest_wait_s": x,
"workers": k, ...}`` from the scaler's last tick (its expiring health key and state hash), 503 when
the scaler is not ticking so KEDA holds its ``fallback`` size instead of scaling on a stale number.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from inferpool import drift, feedback, keys, model_store, queues, status
from inferpool.drift import cache as drift_cache
from inferpool.drift.metrics import concept_families, drift_families
from inferpool.errors import ModelError
from inferpool.records import Heartbeat, LedgerField, in_flight
from inferpool.settings import Settings, get_settings
from inferpool.telemetry import MetricsServer, serve

__all__ = [
    "ClusterCollector", "MetricsServer", "add_exporter_command", "add_keda_route", "serve", "start_cluster_exporter",
]  # fmt: skip

logger = logging.getLogger(__name__)

# A worker whose heartbeat is older than keys.WORKER_STALE_S reads up=0; after this
# long without one it leaves the per-worker series altogether.
WORKER_GONE_S = 60.0


class ClusterCollector:
    """A prometheus_client collector: one look at Redis per scrape, metric families built fresh each time."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None, worker_gone_s: float = WORKER_GONE_S):
        self.client = client
        self.settings = settings or get_settings()
        self.worker_gone_s = worker_gone_s
        self._manifest: model_store.Manifest | None = None

    # --- reading ------------------------------------------------------------------------
    def _manifest_now(self) -> model_store.Manifest | None:
        """The served model's manifest, re-read only when ``current`` names another version."""
        try:
            version = model_store.current_version(Path(self.settings.model_dir))
            if self._manifest is None or self._manifest.version != version:
                self._manifest = model_store.read_manifest(Path(self.settings.model_dir), version)
        except (ModelError, OSError) as exc:
            logger.debug("no manifest for drift: %s", exc)
            self._manifest = None
        return self._manifest

    def read(self) -> tuple[queues.Snapshot, dict[str, int], list[Heartbeat], list[bytes]]:
        """Queues, ledger, workers and the newest labelled predictions (drift is read by ``drift_report``)."""
        snap = queues.snapshot(self.client)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(keys.LEDGER)
        pipe.lrange(keys.FEEDBACK, 0, self.settings.drift_accuracy_window - 1)
        ledger_raw, feedback_raw = pipe.execute()
        ledger = {k.decode(): int(v) for k, v in ledger_raw.items()}
        return snap, ledger, status.heartbeats(self.client, snap.taken_at - self.worker_gone_s), feedback_raw

    def drift_report(self, manifest: model_store.Manifest) -> drift.DriftReport:
        """The window's report, shared with the drift route for ``INFERPOOL_DRIFT_CACHE_S``."""
        s = self.settings
        return drift_cache.report(self.client, manifest, drift.policy_of(s), s.drift_cache_s)

    def targets(self) -> list[dict[str, Any]]:
        """Live workers' metrics endpoints, as Prometheus ``http_sd_configs`` expects them."""
        now = time.time()
        out = []
        for w in status.heartbeats(self.client):
            addr = w.metrics
            if addr and w.live(now):
                out.append({"targets": [addr], "labels": {"worker": w.name}})
        return out

    def keda(self) -> dict[str, Any] | None:
        """The scaler's last decision for KEDA's ``metrics-api`` trigger, or None when the scaler is not ticking.

        ``desired_processes`` is the value to scale on (``valueLocation: desired_processes``, ``targetValue`` =
        processes per pod); the oldest wait is read live from the queue, the rest is the scaler's last tick.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.get(keys.SCALER_HEALTH)
        pipe.hgetall(keys.SCALER_STATE)
        health_raw, state_raw = pipe.execute()
        if health_raw is None:  # expires after a few missed ticks
            return None
        health = orjson.loads(health_raw)
        state = {k.decode(): v.decode() for k, v in state_raw.items()}
        queue = state.get("queue") or self.settings.scaler_queue
        snap = queues.snapshot(self.client)
        q = snap.queues.get(queue)
        return {
            "desired_processes": int(health["desired"]),
            "actual_processes": int(health["actual"]),
            "oldest_wait_s": round(q.oldest_age_s, 4) if q is not None else float(state.get("oldest_wait_s") or 0),
            "depth": q.depth if q is not None else int(state.get("depth") or 0),
            "workers": int(state.get("workers") or 0),
            "queue": queue,
            "updated": float(health["t"]),
        }

    # --- exposition ------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("inferpool_exporter_redis_up", "1 when the exporter could read Redis on this scrape")
        try:
            snap, ledger, workers, feedback_raw = self.read()
            manifest = self._manifest_now()
            report = self.drift_report(manifest) if manifest is not None and manifest.features else None
        except (redis.RedisError, OSError) as exc:
            logger.warning("exporter: cannot read Redis: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._queue_families(snap, ledger)
        yield from self._worker_families(workers, snap.taken_at)
        yield from self._ledger_families(ledger)
        yield from drift_families(report, self.settings)
        yield from concept_families(feedback.decode_entries(feedback_raw), manifest, self.settings)
        took = GaugeMetricFamily(
            "inferpool_exporter_scrape_duration_seconds", "Time to read Redis and build this scrape"
        )
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _queue_families(self, snap: queues.Snapshot, ledger: dict[str, int]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "inferpool_queue_messages", "Messages waiting, summed over priority sub-lists", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "inferpool_queue_oldest_age_seconds", "Age of the oldest waiting message (enqueue header)", labels=["queue"]
        )
        for name, q in snap.queues.items():
            depth.add_metric([name], q.depth)
            age.add_metric([name], q.oldest_age_s)
        yield depth
        yield age
        unacked = GaugeMetricFamily("inferpool_unacked_messages", "Messages taken by workers and not yet acknowledged")
        unacked.add_metric([], snap.unacked)
        yield unacked
        unacked_age = GaugeMetricFamily(
            "inferpool_unacked_oldest_age_seconds", "Time since the oldest unacknowledged message was delivered"
        )
        unacked_age.add_metric([], snap.unacked_oldest_age_s)
        yield unacked_age
        vt = GaugeMetricFamily(
            "inferpool_visibility_timeout_seconds", "Unacknowledged messages are redelivered after this long"
        )
        vt.add_metric([], self.settings.visibility_timeout_s)
        yield vt
        target = GaugeMetricFamily(
            "inferpool_queue_wait_target_seconds", "Queue wait the scaler aims for (INFERPOOL_SCALER_WAIT_TARGET_S)"
        )
        target.add_metric([], self.settings.scaler_wait_target_s)
        yield target
        redelivered = CounterMetricFamily(
            "inferpool_messages_redelivered", "Messages workers received a second time (kombu's redelivered flag)"
        )
        redelivered.add_metric([], ledger.get(LedgerField.redelivered, 0))
        yield redelivered
        redispatched = CounterMetricFamily(
            "inferpool_messages_redispatched", "Lost messages (on no queue, held by no worker) published again"
        )
        redispatched.add_metric([], ledger.get(LedgerField.redispatched, 0))
        yield redispatched

    def _worker_families(self, workers: list[Heartbeat], now: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("inferpool_worker_up", "1 while the worker's heartbeat is fresh", labels=["worker"])
        procs = GaugeMetricFamily(
            "inferpool_worker_pool_processes", "Pool processes of a live worker", labels=["worker"]
        )
        busy = GaugeMetricFamily("inferpool_worker_busy_processes", "Pool processes running a task", labels=["worker"])
        live = 0
        for w in workers:
            alive = w.live(now)
            live += alive
            up.add_metric([w.name], 1 if alive else 0)
            if alive:
                procs.add_metric([w.name], w.processes)
                busy.add_metric([w.name], w.busy)
        n = GaugeMetricFamily("inferpool_live_workers", "Workers with a fresh heartbeat")
        n.add_metric([], live)
        yield from (up, procs, busy, n)

    def _ledger_families(self, ledger: dict[str, int]) -> Iterator[Metric]:
        for field, help_ in (
            (LedgerField.accepted, "Jobs (and predict requests) accepted"),
            (LedgerField.succeeded, "Jobs whose every result was written, counted once"),
            (LedgerField.failed, "Jobs that failed, counted once"),
            (LedgerField.duplicates, "Completions of work already done (a redelivered task run again)"),
        ):
            name = f"inferpool_ledger_{'duplicate_completions' if field == LedgerField.duplicates else 'jobs_' + field}"
            fam = CounterMetricFamily(name, help_)
            fam.add_metric([], ledger.get(field, 0))
            yield fam
        flight = GaugeMetricFamily(
            "inferpool_ledger_in_flight_jobs", "Accepted minus succeeded minus failed: lost work shows here"
        )
        flight.add_metric([], in_flight(ledger))
        yield flight


# --- serving ------------------------------------------------------------------------------


def _with_keda(app: Any, cluster: ClusterCollector) -> Any:
    """Wrap the metrics WSGI app with ``GET /keda`` (JSON; 503 when the scaler is silent or Redis is down)."""

    def wrapped(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/keda":
            return app(environ, start_response)
        try:
            doc = cluster.keda()
            body, status = (
                (orjson.dumps(doc), "200 OK")
                if doc is not None
                else (
                    orjson.dumps({"error": "no scaler health key (the scaler is not ticking)"}),
                    "503 Service Unavailable",
                )
            )
        except (redis.RedisError, OSError, ValueError, KeyError) as exc:
            body, status = orjson.dumps({"error": type(exc).__name__}), "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return wrapped


def add_keda_route(server: MetricsServer, cluster: ClusterCollector) -> MetricsServer:
    """Add ``GET /keda`` to a running metrics server (wsgiref's ``set_app``: the route lives beside ``/metrics``)."""
    server.httpd.set_app(_with_keda(server.httpd.get_app(), cluster))
    return server


def start_cluster_exporter(
    settings: Settings | None = None,
    client: redis.Redis | None = None,
    extra: Sequence[Any] = (),
    port: int | None = None,
    addr: str | None = None,
) -> MetricsServer:
    """The scaler's entry point: cluster metrics, ``extra`` collectors and ``/targets`` on the scaler port."""
    from inferpool.redis_client import sync_client

    s = settings or get_settings()
    cluster = ClusterCollector(client or sync_client(s.redis_url), s)
    server = serve(
        s.scaler_metrics_port if port is None else port,
        [cluster, *extra],
        addr or s.scaler_metrics_host,
        targets=cluster.targets,
    )
    return add_keda_route(server, cluster)


# --- `inferpool exporter` -------------------------------------------------------------------


def run_exporter(ns: argparse.Namespace) -> int:
    from inferpool import telemetry

    s = get_settings()
    telemetry.setup_logging("exporter", s)
    server = start_cluster_exporter(s, port=ns.port, addr=ns.address)
    logger.info("cluster metrics at %s/metrics, worker targets at %s/targets, KEDA at %s/keda", *[server.url] * 3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.close()
    return 0


def add_exporter_command(sub: Any) -> None:
    """Register ``inferpool exporter`` (for deployments that run no scaler)."""
    p = sub.add_parser("exporter", help="export cluster metrics from Redis: queues, workers, ledger, drift")
    p.add_argument("--port", type=int, help="default: INFERPOOL_SCALER_METRICS_PORT (the scaler serves them there)")
    p.add_argument("--address", help="default: INFERPOOL_SCALER_METRICS_HOST")
    p.set_defaults(fn=run_exporter)
