"""What the scaler measures each tick, read from Redis: queue, task samples, workers.

* waiting and oldest wait: the queue's lists (``inferpool.queues.snapshot``);
* held: the queue's messages in kombu's ``unacked`` hash (taken by a worker, running or prefetched),
  which ``LLEN`` never shows;
* wait p95, service time, median latency: the capped stream each finished task appends to
  (``keys.task_samples``; entry ids are the finish time in ms, on Redis's clock);
* arrival rate: derived, not counted at the API. Arrivals = completions + change in (waiting + held),
  so ``completions + waiting + held`` is a cumulative arrival count whatever published the task (API,
  jobs, another client), with no write on the API's latency path. Failed tasks write no sample and are
  missed, which only matters if most tasks fail;
* workers: fresh heartbeats (``workers/heartbeat.py``) of workers consuming the queue, named with the prefix.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import redis

from inferpool import keys, queues, status
from inferpool.records import Heartbeat, TaskSample, service_time_s
from scaler.policy import Observation

RATE_LONG_S = 15.0  # steady window: at 12 tasks/s a 15 s count has ~7% Poisson noise
RATE_MIN_REF_S = 2.0  # a step is judged against at least this much steady history...
RATE_CHANGE_Z = 5.0  # ...and is a newest interval this many Poisson deviations off the steady rate...
RATE_MIN_CHANGE = 5.0  # ...and at least this many tasks off
RATE_MIN_SPAN_S = 0.5
RATE_RESET_DROP = 50.0  # the cumulative count fell this much: Redis restarted or a queue was purged
WAIT_WINDOW_S = 10.0  # p95 queue wait of tasks finished in this window
SERVICE_WINDOW_S = 30.0  # mean run time over this window
WAIT_QUANTILE = 95.0
SAMPLES_READ_MAX = keys.TASK_SAMPLES_MAXLEN + 1024


class ArrivalRate:
    """Rate of a cumulative count read once a tick, over an adaptive window.

    Steady, the window is the last ``long_s`` seconds: low noise, so a noisy load moves nothing. When the
    newest interval alone holds significantly more or fewer arrivals than the steady rate predicts
    (Poisson, ``z`` deviations), the window restarts at that interval: the step is measured from
    post-step arrivals only, then refined as the window grows back. Testing the newest interval alone
    (not the last few seconds) mostly fires on the first whole interval after the step, rarely on the
    one it began in, whose mixed count would understate a rise.
    """

    def __init__(self, long_s: float = RATE_LONG_S, min_ref_s: float = RATE_MIN_REF_S, z: float = RATE_CHANGE_Z):
        self.long_s, self.min_ref_s, self.z = long_s, min_ref_s, z
        self.points: deque[tuple[float, float]] = deque()  # (t_s, cumulative count), oldest first
        self.changes = 0  # steps detected, for logs and tests

    def add(self, t_s: float, count: float) -> None:
        if self.points and count < self.points[-1][1] - RATE_RESET_DROP:
            self.points.clear()
        self.points.append((t_s, count))
        while len(self.points) > 2 and self.points[1][0] <= t_s - self.long_s:
            self.points.popleft()
        self._detect_step()

    def _detect_step(self) -> None:
        if len(self.points) < 3:
            return
        (t_ref, c_ref), (t0, c0), (t1, c1) = self.points[0], self.points[-2], self.points[-1]
        if t0 - t_ref < self.min_ref_s:
            return
        ref_rate = (c0 - c_ref) / (t0 - t_ref)
        expected = max(0.0, ref_rate) * (t1 - t0)
        diff = (c1 - c0) - expected
        # Poisson variance of the newest count, plus that of the steady rate it is compared with.
        variance = max(expected, 1.0) + expected**2 / max(c0 - c_ref, 1.0)
        if abs(diff) >= RATE_MIN_CHANGE and abs(diff) > self.z * math.sqrt(variance):
            while len(self.points) > 2:
                self.points.popleft()
            self.changes += 1

    def rate(self) -> float | None:
        """Arrivals per second over the window; None until two reads span ``RATE_MIN_SPAN_S``."""
        if len(self.points) < 2:
            return None
        (t0, c0), (t1, c1) = self.points[0], self.points[-1]
        if t1 - t0 < RATE_MIN_SPAN_S:
            return None
        return max(0.0, (c1 - c0) / (t1 - t0))


class TaskSamples:
    """Recent (finish time, queue wait, run time) of finished tasks, times in epoch seconds."""

    def __init__(self, keep_s: float = max(WAIT_WINDOW_S, SERVICE_WINDOW_S)) -> None:
        self.keep_s = keep_s
        self.items: deque[tuple[float, float, float]] = deque()

    def add(self, finish_s: float, wait_s: float, run_s: float) -> None:
        self.items.append((finish_s, wait_s, run_s))

    def trim(self, now_s: float) -> None:
        while self.items and self.items[0][0] < now_s - self.keep_s:
            self.items.popleft()

    def _since(self, start_s: float, col: int) -> list[float]:
        return [item[col] for item in self.items if item[0] >= start_s]

    def wait_quantile(self, now_s: float, window_s: float = WAIT_WINDOW_S, q: float = WAIT_QUANTILE) -> float | None:
        waits = self._since(now_s - window_s, 1)
        return float(np.percentile(waits, q)) if waits else None

    def mean_run(self, now_s: float, window_s: float = SERVICE_WINDOW_S) -> float | None:
        return service_time_s([TaskSample(0.0, run) for run in self._since(now_s - window_s, 2)])


class WorkerView(NamedTuple):
    """One managed worker as its heartbeat shows it."""

    name: str
    host: str
    pid: int
    processes: int
    busy: int
    updated: float  # epoch seconds of the heartbeat


@dataclass(frozen=True, slots=True)
class Signal:
    """One tick's measurements of the managed queue."""

    now_s: float  # monotonic
    queue: str
    waiting: int
    held: int
    oldest_wait_s: float
    arrival_rate_per_s: float | None
    service_time_s: float | None
    wait_p95_s: float | None
    latency_p50_s: float | None
    completed: int  # tasks finished since the previous read
    workers: tuple[WorkerView, ...]

    @property
    def depth(self) -> int:
        return self.waiting + self.held

    @property
    def processes(self) -> int:
        return sum(w.processes for w in self.workers)

    def observation(self, current_procs: int) -> Observation:
        return Observation(
            now_s=self.now_s,
            oldest_wait_s=self.oldest_wait_s,
            wait_p95_s=self.wait_p95_s,
            depth=self.depth,
            arrival_rate_per_s=self.arrival_rate_per_s,
            service_time_s=self.service_time_s,
            current_procs=current_procs,
            latency_p50_s=self.latency_p50_s,
        )


def _stream_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


class SignalReader:
    """Reads a :class:`Signal` each tick; keeps the rate and sample history between reads.

    Any Redis error propagates: the daemon logs it and tries again next tick, with history intact.
    """

    def __init__(
        self, client: redis.Redis, queue: str, worker_prefix: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client, self.queue, self.prefix, self.clock = client, queue, worker_prefix, clock
        self.rate = ArrivalRate()
        self.samples = TaskSamples()
        self.completed_total = 0
        self._last_id: bytes | None = None
        self._held_suffix = f'"{queue}"]'.encode()  # kombu stores [message, exchange, routing_key]

    def read(self) -> Signal:
        snap = queues.snapshot(self.client, (self.queue,))
        stream = keys.task_samples(self.queue)
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.hvals(keys.UNACKED_HASH)
        if self._last_id is None:
            pipe.xrevrange(stream, "+", "-", count=SAMPLES_READ_MAX)
        else:
            pipe.xrange(stream, b"(" + self._last_id, "+", count=SAMPLES_READ_MAX)
        (secs, micros), unacked, entries = pipe.execute()
        now_mono, server_now = self.clock(), secs + micros / 1e6
        first = self._last_id is None
        if first:
            entries = list(reversed(entries))
        new_latencies = []
        for entry_id, fields in entries:
            sample = TaskSample.decode(fields)
            wait_s, run_s = sample.wait_s, sample.run_s or 0.0
            self.samples.add(_stream_ms(entry_id) / 1000.0, wait_s, run_s)
            new_latencies.append(wait_s + run_s)
        if entries:
            self._last_id = entries[-1][0]
        elif first:
            self._last_id = b"0-0"
        completed = 0 if first else len(entries)
        self.completed_total += completed
        self.samples.trim(server_now)
        held = sum(1 for v in unacked if v.rstrip().endswith(self._held_suffix))
        state = snap.queues[self.queue]
        self.rate.add(now_mono, self.completed_total + state.depth + held)
        return Signal(
            now_s=now_mono,
            queue=self.queue,
            waiting=state.depth,
            held=held,
            oldest_wait_s=state.oldest_age_s,
            arrival_rate_per_s=self.rate.rate(),
            service_time_s=self.samples.mean_run(server_now),
            wait_p95_s=self.samples.wait_quantile(server_now),
            latency_p50_s=float(np.median(new_latencies)) if new_latencies and not first else None,
            completed=completed,
            workers=self._workers(status.heartbeats(self.client)),
        )

    def _workers(self, beats: list[Heartbeat]) -> tuple[WorkerView, ...]:
        return tuple(
            sorted(
                WorkerView(hb.name, hb.host, hb.pid, hb.processes, hb.busy, hb.updated)
                for hb in beats
                if hb.name.startswith(self.prefix) and hb.fields and self.queue in hb.queues
            )
        )
