"""Scaling policies on the simulated clock: ours and the tutorial's run the real ``scaler`` code; three peers.

Ours (``scaler.policy.decide``) and the tutorial's (``scaler.tutorial.decide_tutorial``) are fed exactly what
the daemon feeds them: a :class:`scaler.load_signal.Signal` built each tick with the real
:class:`~scaler.load_signal.ArrivalRate` (the cumulative count completed + waiting + held, as
``SignalReader.read`` adds it) and :class:`~scaler.load_signal.TaskSamples` (finished tasks' wait and run), turned
into an ``Observation`` by ``Signal.observation`` with the actuator's view of the pool (what it asked for).

The peers follow their published rules:

* Celery ``--autoscale=max,min`` (``celery/worker/autoscale.py``): every second a worker grows to the number
  of tasks it has reserved (running + prefetched), up to max, at once; it shrinks to that number only when
  ``keepalive`` (30 s) has passed since its last growth.
* HPA: every 15 s, ``desired = ceil(current * metric / target)`` outside a 10 % tolerance, the metric the
  busy share of processes from the last heartbeats (W is not CPU: a CPU metric would not see it); up at most
  max(100 %, 4 replicas) per period; down to the largest recommendation of the last 300 s.
* KEDA's Redis list scaler: every 30 s, ``desired = ceil(LLEN / listLength)`` (listLength 5, KEDA's default),
  under the HPA's 300 s down window (KEDA's own cooldown applies to scaling to zero only).

Replica policies (HPA, KEDA) start a process as a container (~20 s); the others grow a pool (~0.25 s).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.fleet.model import Fleet
from inferpool import keys
from scaler.load_signal import ArrivalRate, Signal, TaskSamples, WorkerView
from scaler.policy import Direction, PolicyConfig, PolicyState, decide
from scaler.tutorial import decide_tutorial

CONTAINER_DELAY_S = 20.0
KEEPALIVE_S = 30.0
HPA_SYNC_S, HPA_DOWN_WINDOW_S, HPA_TOLERANCE, HPA_TARGET_BUSY = 15.0, 300.0, 0.1, 0.7
KEDA_POLL_S, KEDA_LIST_LENGTH = 30.0, 5


class SimSignal:
    """Builds the daemon's :class:`Signal` from the simulated fleet, with the daemon's own rate and samples."""

    def __init__(self) -> None:
        self.rate = ArrivalRate()
        self.samples = TaskSamples()
        self.completed_total = 0

    def read(self, fleet: Fleet) -> Signal:
        now = fleet.env.now
        new, fleet.samples = fleet.samples, []
        for finish, wait, run in new:
            self.samples.add(finish, wait, run)
        self.completed_total += len(new)
        self.samples.trim(now)
        work = fleet.work
        waiting, held = len(work.waiting), work.busy
        self.rate.add(now, self.completed_total + waiting + held)
        latencies = sorted(w + r for _, w, r in new)
        procs, busy = fleet.heartbeat
        hosts = fleet.cfg.hosts
        views = tuple(
            WorkerView(f"work@host{h}", f"host{h}", h, procs // hosts + (h < procs % hosts), busy // hosts, now)
            for h in range(hosts)
        )
        return Signal(
            now_s=now, queue=keys.QUEUE_WORK, waiting=waiting, held=held, oldest_wait_s=work.oldest_wait_s(),
            arrival_rate_per_s=self.rate.rate(), service_time_s=self.samples.mean_run(now),
            wait_p95_s=self.samples.wait_quantile(now), latency_p50_s=latencies[len(latencies) // 2] if new else None,
            completed=len(new), workers=views,
        )  # fmt: skip


@dataclass
class ScalerPolicy:
    """Ours or the tutorial's: the real decide function, the real signal, a tick each second."""

    name: str
    cfg: PolicyConfig
    tutorial: bool = False
    tick_s: float = 1.0
    delay_s: float | None = None  # None: a pool_grow, the fleet's grow delay
    state: PolicyState = field(default_factory=PolicyState)
    signal: SimSignal = field(default_factory=SimSignal)

    def step(self, fleet: Fleet) -> int | None:
        obs = self.signal.read(fleet).observation(fleet.paid)
        d = (decide_tutorial if self.tutorial else decide)(obs, self.state, self.cfg)
        self.state = d.state
        return None if d.direction is Direction.HOLD else d.target


@dataclass
class CeleryAutoscale:
    """``--autoscale=max,min`` on every host's worker; reserved = running + prefetched (one per process)."""

    max_per_host: int
    min_per_host: int = 1
    name: str = "celery --autoscale"
    tick_s: float = 1.0
    delay_s: float | None = None
    last_up_s: float = -math.inf

    def step(self, fleet: Fleet) -> int | None:
        hosts = fleet.cfg.hosts
        reserved = math.ceil((fleet.work.busy + len(fleet.work.waiting)) / hosts)
        qty = min(reserved, self.max_per_host)
        cur = math.ceil(fleet.paid / hosts)
        if qty > cur:
            self.last_up_s = fleet.env.now
            return qty * hosts
        qty = max(qty, self.min_per_host)
        if qty < cur and fleet.env.now - self.last_up_s > KEEPALIVE_S:
            return qty * hosts
        return None


@dataclass
class _Stabilised:
    """The HPA's down rule: act on the largest recommendation of the window; up at most max(2x, +4)."""

    min_procs: int
    max_procs: int
    history: deque = field(default_factory=deque)

    def bound(self, now: float, cur: int, desired: int) -> int:
        self.history.append((now, desired))
        while self.history and self.history[0][0] < now - HPA_DOWN_WINDOW_S:
            self.history.popleft()
        if desired < cur:
            desired = min(cur, max(d for _, d in self.history))
        desired = min(desired, max(2 * cur, cur + 4))
        return max(self.min_procs, min(self.max_procs, desired))


@dataclass
class Hpa:
    min_procs: int
    max_procs: int
    name: str = "HPA (busy share 70 %)"
    tick_s: float = HPA_SYNC_S
    delay_s: float = CONTAINER_DELAY_S
    rule: _Stabilised | None = None

    def step(self, fleet: Fleet) -> int | None:
        self.rule = self.rule or _Stabilised(self.min_procs, self.max_procs)
        procs, busy = fleet.heartbeat
        cur = fleet.paid
        ratio = (busy / procs if procs else 1.0) / HPA_TARGET_BUSY
        desired = cur if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(procs * ratio)
        target = self.rule.bound(fleet.env.now, cur, desired)
        return None if target == cur else target


@dataclass
class Keda:
    min_procs: int
    max_procs: int
    name: str = "KEDA list length (5)"
    tick_s: float = KEDA_POLL_S
    delay_s: float = CONTAINER_DELAY_S
    rule: _Stabilised | None = None

    def step(self, fleet: Fleet) -> int | None:
        self.rule = self.rule or _Stabilised(self.min_procs, self.max_procs)
        cur = fleet.paid
        desired = math.ceil(len(fleet.work.waiting) / KEDA_LIST_LENGTH)
        target = self.rule.bound(fleet.env.now, cur, desired)
        return None if target == cur else target


@dataclass
class Static:
    procs: int
    name: str = "static at max"
    tick_s: float = 1e9
    delay_s: float = 0.0

    def step(self, fleet: Fleet) -> int | None:
        return None


Policy = ScalerPolicy | CeleryAutoscale | Hpa | Keda | Static


def ticker(policy: Policy, phase_s: float = 0.0):
    """A SimPy process: the policy's tick loop acting on the fleet, its first tick ``phase_s`` into the run."""

    def run(fleet: Fleet):
        yield fleet.env.timeout(phase_s)
        while True:
            yield fleet.env.timeout(policy.tick_s)
            target = policy.step(fleet)
            if target is not None:
                fleet.set_target(target, fleet.cfg.grow_delay_s if policy.delay_s is None else policy.delay_s)

    return run


def policy_config(hosts: int, procs_per_host: int, max_nodes_factor: float = 1.0) -> PolicyConfig:
    """The product's defaults (``scaler.daemon.policy_config`` with default settings), bounds per fleet."""
    return PolicyConfig(min_procs=hosts, max_procs=math.ceil(procs_per_host * hosts * max_nodes_factor))


def all_policies(hosts: int, procs_per_host: int = 8, max_nodes_factor: float = 1.0) -> list[Policy]:
    cfg = policy_config(hosts, procs_per_host, max_nodes_factor)
    return [
        ScalerPolicy("tutorial (+-1 on median)", cfg, tutorial=True),
        CeleryAutoscale(max_per_host=math.ceil(procs_per_host * max_nodes_factor)),
        Hpa(cfg.min_procs, cfg.max_procs),
        Keda(cfg.min_procs, cfg.max_procs),
        ScalerPolicy("inferpool (Erlang-C)", cfg),
    ]
