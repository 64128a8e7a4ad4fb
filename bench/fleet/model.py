"""The simulated pool: hosts, API batchers, the online and work queues, one Redis, on SimPy's clock.

What is modelled, and how:

* **Redis** is one single-threaded server: every operation waits for the ones before it (FIFO) and
  holds it for its measured CPU cost. A task costs three operations (publish, pop, finish: result,
  ack, sample), a third of the measured per-task cost each; workers at rest cost Redis a measured
  background (heartbeats, polls, the unacked sweep) per worker. Its wait shows in queue waits.
* **API processes**, one per host, each with the product's micro-batcher: a batch of waiting one-row
  requests leaves as soon as one of ``batch_max_in_flight`` slots is free, or when its oldest request
  has waited ``batch_max_wait_s``. Batches are tasks on the shared online queue, served by a fixed
  online pool (``online_procs_per_host`` per host) in the measured batch run time.
* **Work requests** (W > 0) are one task each on the work queue; a work process is held W plus the
  measured overhead. The work pool is what the policies size.
* **Hand-off**: a task that finds a process free still waits for the worker to take it (the pop after the
  previous ack, the main process passing it to a child): a draw from that queue's measured distribution,
  the process held meanwhile.
* **Actuators**: a process asked for arrives after ``grow_delay_s`` (``pool_grow``) or
  ``container_delay_s`` (a replica), plus ``node_delay_s`` when no host has room and a node is added.
  A shrink stops idle processes only (prefork's rule); one that finds them busy waits for them.
* **Heartbeats**: workers report their size and busy processes every ``heartbeat_s``; the scaler's
  worker views and the metric-driven policies see those, not the live pool.

The scaler side (signal, policy, tick) is in :mod:`bench.fleet.policies`; this module only exposes the
quantities a real daemon could read from Redis.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from bench.fleet.calibration import Costs

BATCH_ROW_S = 0.000006  # compiled model, per row (README: ~0.006 ms): negligible beside the task's fixed cost


@dataclass(frozen=True, slots=True)
class FleetConfig:
    hosts: int = 1
    procs_per_host: int = 8  # work processes a host holds (the product's max per worker)
    max_nodes_factor: float = 1.0  # the fleet may grow to this many times ``hosts`` nodes (new nodes: node delay)
    start_procs: int = 1
    online_procs_per_host: int = 2
    batch_max_in_flight: int = 2
    batch_max_wait_s: float = 0.005
    batch_max_rows: int = 256
    heartbeat_s: float = 1.0
    grow_delay_s: float = 0.25
    node_delay_s: float = 60.0
    online_detail: bool = True  # False: online requests load Redis only (fleet runs; the online pool is fixed)
    online_tasks_per_request: float = 0.95  # with online_detail False: batches per light request (measured)
    redis_shards: int = 1  # queues sharded over this many Redis servers, tasks placed by id (round robin here)

    @property
    def max_hosts(self) -> int:
        return max(self.hosts, math.ceil(self.hosts * self.max_nodes_factor))


class Redis:
    """One single-threaded server, FIFO: an operation's completion is its start plus its cost."""

    def __init__(self) -> None:
        self.free_at = 0.0
        self.busy_s = 0.0
        self.ops = 0
        self.wait_s_total = 0.0
        self.wait_max_s = 0.0

    def serve(self, now: float, cost_s: float) -> float:
        start = max(now, self.free_at)
        self.free_at = start + cost_s
        self.busy_s += cost_s
        self.ops += 1
        wait = start - now
        self.wait_s_total += wait
        self.wait_max_s = max(self.wait_max_s, wait)
        return self.free_at


@dataclass(slots=True)
class Task:
    enq_s: float
    service_s: float
    redis: Redis
    start_s: float = 0.0
    batch: list | None = None  # online: the requests' arrival times


@dataclass
class Records:
    work: list[tuple[float, float, float]] = field(default_factory=list)  # (enqueue, wait, run)
    online: list[tuple[float, float, int]] = field(default_factory=list)  # (enqueue, wait, requests)
    light_latency: list[tuple[float, float]] = field(default_factory=list)  # (arrival, answer - arrival)
    pool: list[tuple[float, int]] = field(default_factory=list)  # (t, processes paid for) at each change


class Pickups:
    """Draws from a measured distribution given as evenly spaced quantiles (inverse CDF, interpolated)."""

    def __init__(self, quantiles: tuple[float, ...], rng: np.random.Generator) -> None:
        self.q, self.rng = np.asarray(quantiles, dtype=float), rng
        self.left: list[float] = []

    def __call__(self) -> float:
        if not self.left:
            u = self.rng.uniform(0.0, 1.0, 4096)
            self.left = np.interp(u, np.linspace(0.0, 1.0, len(self.q)), self.q).tolist()
        return self.left.pop()


class Queue:
    """A task queue and the processes serving it; three Redis operations per task."""

    def __init__(self, fleet: Fleet, procs: int, on_done, pickup) -> None:
        self.fleet, self.env, self.on_done, self.pickup = fleet, fleet.env, on_done, pickup
        self.waiting: deque[Task] = deque()
        self.procs, self.busy, self.retiring = procs, 0, 0
        self.completed = 0

    def submit(self, task: Task) -> None:
        cost = self.fleet.costs.redis_per_task_s / 3
        done = task.redis.serve(self.env.now, cost)
        self.env.timeout(done - self.env.now).callbacks.append(lambda _e: self._arrive(task))

    def _arrive(self, task: Task) -> None:
        self.waiting.append(task)
        self._dispatch()

    def _dispatch(self) -> None:
        cost = self.fleet.costs.redis_per_task_s / 3
        while self.waiting and self.busy < self.procs:
            task = self.waiting.popleft()
            self.busy += 1
            task.start_s = task.redis.serve(self.env.now, cost) + self.pickup()
            end = task.start_s + task.service_s
            self.env.timeout(end - self.env.now).callbacks.append(lambda _e, t=task: self._finish(t))

    def _finish(self, task: Task) -> None:
        done = task.redis.serve(self.env.now, self.fleet.costs.redis_per_task_s / 3)
        self.env.timeout(done - self.env.now).callbacks.append(lambda _e: self._release(task))

    def _release(self, task: Task) -> None:
        self.busy -= 1
        self.completed += 1
        if self.retiring:
            self.retiring -= 1
            self.procs -= 1
            self.fleet.pool_changed()
        self.on_done(task, self.env.now)
        self._dispatch()

    def oldest_wait_s(self) -> float:
        return self.env.now - self.waiting[0].enq_s if self.waiting else 0.0


class Batcher:
    """One API process's micro-batcher (``api/batcher.py``): send when a slot frees or the oldest waited max."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet, self.env, self.cfg = fleet, fleet.env, fleet.cfg
        self.pending: deque[float] = deque()
        self.in_flight = 0
        self.timer_for: float | None = None

    def submit(self, t_s: float) -> None:
        self.pending.append(t_s)
        if self.in_flight < self.cfg.batch_max_in_flight:
            self._send()
        elif self.timer_for is None:
            self._arm()

    def _arm(self) -> None:
        oldest = self.pending[0]
        self.timer_for = oldest
        delay = max(0.0, oldest + self.cfg.batch_max_wait_s - self.env.now)
        self.env.timeout(delay).callbacks.append(lambda _e: self._deadline(oldest))

    def _deadline(self, oldest: float) -> None:
        self.timer_for = None
        if self.pending and self.pending[0] == oldest:
            self._send()
        if self.pending and self.timer_for is None:
            self._arm()

    def _send(self) -> None:
        n = min(len(self.pending), self.cfg.batch_max_rows)
        batch = [self.pending.popleft() for _ in range(n)]
        self.in_flight += 1
        service = self.fleet.costs.online_batch_s + BATCH_ROW_S * n
        self.fleet.online.submit(Task(self.env.now, service, self.fleet.shard(), batch=batch))
        self.fleet.batch_owner[id(batch)] = self

    def done(self) -> None:
        self.in_flight -= 1
        if self.pending and self.in_flight < self.cfg.batch_max_in_flight:
            self._send()


class Fleet:
    """The simulated system; ``run`` replays arrivals. Policies act through :meth:`set_target`."""

    def __init__(self, cfg: FleetConfig, costs: Costs, start_procs: int | None = None, seed: int = 0) -> None:
        self.cfg, self.costs = cfg, costs
        self.env = simpy.Environment()
        self.shards = [Redis() for _ in range(cfg.redis_shards)]
        self._next_shard = 0
        self.records = Records()
        self._rng = np.random.default_rng(seed)
        self.work = Queue(
            self,
            start_procs or cfg.start_procs,
            self._work_done,
            Pickups(costs.work_pickup_quantiles_s, self._rng),
        )
        self.online = Queue(
            self,
            cfg.online_procs_per_host * cfg.hosts,
            self._online_done,
            Pickups(costs.pickup_quantiles_s, self._rng),
        )
        self.batchers = [Batcher(self) for _ in range(cfg.hosts)]
        self.batch_owner: dict[int, Batcher] = {}
        self.pending: list[list[bool]] = []  # processes asked for and not yet up: [cancelled] tokens
        self.actions = 0
        self.samples: list[tuple[float, float, float]] = []  # finished work tasks since the scaler's last read
        self.heartbeat: tuple[int, int] = (self.work.procs, 0)  # (processes, busy) as last reported
        self.changes: list[tuple[float, int, int]] = []  # (t, from, to) of every action
        self.pool_changed()

    def shard(self) -> Redis:
        self._next_shard = (self._next_shard + 1) % len(self.shards)
        return self.shards[self._next_shard]

    @property
    def redis_busy_s(self) -> float:
        return sum(r.busy_s for r in self.shards)

    @property
    def redis_wait_mean_s(self) -> float:
        return sum(r.wait_s_total for r in self.shards) / max(1, sum(r.ops for r in self.shards))

    # --- the pool -----------------------------------------------------------------------------------------

    @property
    def starting(self) -> int:
        """Processes asked for and not yet up (paid for: a booting container costs)."""
        return len(self.pending)

    @property
    def paid(self) -> int:
        return self.work.procs + self.starting - self.work.retiring

    def pool_changed(self) -> None:
        self.records.pool.append((self.env.now, self.work.procs + self.starting))

    def hosts_needed(self, procs: int) -> int:
        return math.ceil(procs / self.cfg.procs_per_host)

    def set_target(self, target: int, process_delay_s: float) -> None:
        """Ask for ``target`` processes; each arrives after its delay (a node's first)."""
        target = max(1, min(target, self.cfg.procs_per_host * self.cfg.max_hosts))
        current = self.paid
        if target == current:
            return
        self.actions += 1
        self.changes.append((self.env.now, current, target))
        if target > current:
            have_hosts = max(self.cfg.hosts, self.hosts_needed(current))
            for k in range(current + 1, target + 1):
                node = self.cfg.node_delay_s if self.hosts_needed(k) > have_hosts else 0.0
                token = [False]
                self.pending.append(token)
                self.env.timeout(process_delay_s + node).callbacks.append(lambda _e, tok=token: self._started(tok))
        else:
            cancel = min(self.starting, current - target)  # not yet started: cancel the newest first
            for _ in range(cancel):
                self.pending.pop()[0] = True
            shrink = current - target - cancel
            idle = max(0, self.work.procs - self.work.busy - self.work.retiring)
            now_gone = min(idle, shrink)
            self.work.procs -= now_gone
            self.work.retiring += shrink - now_gone
        self.pool_changed()

    def _started(self, token: list[bool]) -> None:
        if token[0]:
            return  # cancelled by a shrink
        self.pending.remove(token)
        self.work.procs += 1
        self.pool_changed()
        self.work._dispatch()

    def _heartbeats(self):
        while True:
            self.heartbeat = (self.work.procs, self.work.busy)
            yield self.env.timeout(self.cfg.heartbeat_s)

    def _redis_background(self):
        step = 0.1
        while True:
            workers = 2 * self.cfg.hosts  # an online and a work worker per host, each polling every shard
            for r in self.shards:
                r.serve(self.env.now, self.costs.redis_idle_per_worker_s * workers * step)
            yield self.env.timeout(step)

    # --- arrivals -----------------------------------------------------------------------------------------

    def _work_done(self, task: Task, now: float) -> None:
        run = now - task.start_s
        wait = task.start_s - task.enq_s
        self.records.work.append((task.enq_s, wait, run))
        self.samples.append((now, wait, run))

    def _online_done(self, task: Task, now: float) -> None:
        assert task.batch is not None
        self.records.online.append((task.enq_s, task.start_s - task.enq_s, len(task.batch)))
        for t in task.batch:
            self.records.light_latency.append((t, now - t))
        self.batch_owner.pop(id(task.batch)).done()

    def _arrivals(self, times: np.ndarray, works_ms: np.ndarray):
        overhead = self.costs.work_overhead_s
        light_cost = self.costs.redis_per_task_s * self.cfg.online_tasks_per_request
        hosts = self.cfg.hosts
        for i, (t, w) in enumerate(zip(times.tolist(), works_ms.tolist(), strict=True)):
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            if w > 0:
                self.work.submit(Task(self.env.now, w / 1000.0 + overhead, self.shard()))
            elif self.cfg.online_detail:
                self.batchers[i % hosts].submit(self.env.now)
            else:
                self.shard().serve(self.env.now, light_cost)

    def run(self, times: np.ndarray, works_ms: np.ndarray, until_s: float, ticker=None) -> Records:
        """Replay arrivals until ``until_s``; ``ticker(fleet)`` is a SimPy process generator (the scaler)."""
        self.env.process(self._arrivals(times, works_ms))
        self.env.process(self._heartbeats())
        if self.costs.redis_idle_per_worker_s > 0:
            self.env.process(self._redis_background())
        if ticker is not None:
            self.env.process(ticker(self))
        self.env.run(until=until_s)
        self.pool_changed()
        return self.records


def process_seconds(pool: list[tuple[float, int]], lo: float, hi: float) -> float:
    """Integral of the pool size over [lo, hi) from its change points."""
    total = 0.0
    for (t0, n), (t1, _) in zip(pool, pool[1:], strict=False):
        a, b = max(t0, lo), min(t1, hi)
        if b > a:
            total += n * (b - a)
    if pool:
        total += pool[-1][1] * max(0.0, hi - max(pool[-1][0], lo))
    return total
