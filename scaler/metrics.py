"""The scaler's own metrics, served beside the cluster exporter's (``inferpool/exporter.py``; ``/metrics`` only).

Values live in this object and become metric families at scrape time (a custom collector), not in
prometheus_client's Counter/Gauge: those turn into per-process files whenever PROMETHEUS_MULTIPROC_DIR is
set (as ``inferpool up`` sets it for every child), and every API process would then re-export them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from scaler.load_signal import Signal

logger = logging.getLogger(__name__)

# What the last tick decided on, as the scaler saw it. The arrival rate is the scaler's own estimate
# (the policy's input), exported so a decision can be explained; the measured rate is PromQL's
# rate(inferpool_tasks_enqueued_total[1m]). The outstanding count is not inferpool_queue_messages:
# it adds the messages workers hold unacknowledged.
SIGNAL_GAUGES = (  # (metric name, help, Signal attribute)
    ("inferpool_scaler_oldest_wait_seconds", "Age of the oldest waiting message of the managed queue", "oldest_wait_s"),
    ("inferpool_scaler_wait_p95_seconds", "p95 queue wait of recently finished tasks", "wait_p95_s"),
    ("inferpool_scaler_outstanding_messages", "Messages waiting plus those held unacked by workers", "depth"),
    (
        "inferpool_scaler_arrivals_per_second",
        "Arrival rate the last decision was sized for: the scaler's estimate (completions + depth change)",
        "arrival_rate_per_s",
    ),
    ("inferpool_scaler_service_time_seconds", "Mean run time per task", "service_time_s"),
)


class ScalerMetrics:
    """Decisions, pool sizes and the last signal, as a prometheus_client collector."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self.decisions: dict[tuple[str, str], int] = {}
        self.pool: dict[str, float] = {}  # desired / actual / min / max / need
        self.signal: Signal | None = None
        self.errors: dict[str, int] = {}  # tick errors by stage (observe, act, record)

    def decision(self, direction: str, reason: str) -> None:
        with self._lock:
            self.decisions[(direction, reason)] = self.decisions.get((direction, reason), 0) + 1

    def error(self, stage: str) -> None:
        with self._lock:
            self.errors[stage] = self.errors.get(stage, 0) + 1

    def set_pool(self, **values: float) -> None:
        with self._lock:
            self.pool.update(values)

    def set_signal(self, sig: Signal) -> None:
        with self._lock:
            self.signal = sig

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            decisions, pool, sig, errors = dict(self.decisions), dict(self.pool), self.signal, dict(self.errors)
        c = CounterMetricFamily("inferpool_scaler_decisions", "Scaler decisions", labels=["direction", "reason"])
        for (direction, reason), n in sorted(decisions.items()):
            c.add_metric([direction, reason], n)
        yield c
        e = CounterMetricFamily("inferpool_scaler_errors", "Scaler ticks that failed, by stage", labels=["stage"])
        for stage, n in sorted(errors.items()):
            e.add_metric([stage], n)
        yield e
        for key, doc in (
            ("desired", "Processes the scaler wants"),
            ("actual", "Processes the managed workers have"),
            ("min", "Lower bound on processes"),
            ("max", "Upper bound on processes"),
            ("need", "Processes this tick's load is sized for, before bounds"),
        ):
            if key in pool:
                g = GaugeMetricFamily(f"inferpool_scaler_{key}_processes", doc, labels=["queue"])
                g.add_metric([self.queue], pool[key])
                yield g
        if sig is not None:
            for name, doc, attr in SIGNAL_GAUGES:
                value = getattr(sig, attr)
                if value is not None:
                    g = GaugeMetricFamily(name, doc, labels=["queue"])
                    g.add_metric([self.queue], float(value))
                    yield g
            w = GaugeMetricFamily("inferpool_scaler_workers", "Managed workers heartbeating", labels=["queue"])
            w.add_metric([self.queue], len(sig.workers))
            yield w
