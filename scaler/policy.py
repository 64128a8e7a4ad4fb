"""Scaler policy: a pure function from one tick's observations to a target number of worker processes.

Sizing is Erlang-C (M/M/c): the smallest ``c`` whose predicted p95 queue wait meets the target, where
``P(W > t) = C(c, a) * exp(-(c*mu - lam) * t)``, plus enough processes to clear an existing backlog
within a deadline. Up is fast: one tick, straight to the need. Down is slow: only after the need
stayed below the current size for a whole window, one process per cooldown.

Hysteresis: one arrival-rate sample is trusted only to +-``load_noise`` (default 20%). Up acts when
even the sample's low end needs more processes and sizes for its high end; down needs the high-end
need to stay below the pool for the whole window. A steady load whose samples stay within
+-load_noise of its mean therefore never moves the pool, wherever the first sample fell. The price:
the model ignores a real rise until the rate is 1/(1 - load_noise) times what the pool can serve
within target; below that, the oldest-wait check (``urgent_wait_factor``) adds processes one at a time.

No I/O and no clock: the daemon passes a monotonic ``now_s`` and keeps the returned ``PolicyState``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Any, NamedTuple

from inferpool.settings import Settings

_EPS = 1e-9


def _setting_default(name: str) -> Any:
    """The settings object is the one home of the scaler's defaults; the policy's match it."""
    return Settings.model_fields[name].default


class Direction(Enum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


class Reason(StrEnum):
    """Why this tick's decision was taken: a short label for logs and metrics."""

    ARRIVAL_RATE = "arrival_rate"  # Erlang-C need at the (low end of the) measured rate exceeds the pool
    BACKLOG = "backlog"  # the waiting work cannot be cleared within the deadline
    OLDEST_WAIT = "oldest_wait"  # the model says enough, but messages wait too long: add one
    STABILISED_DOWN = "stabilised_down"  # the need stayed below the pool for a whole window
    STABILISING = "stabilising"  # the need is lower, but not yet for a whole window
    WAIT_HIGH = "wait_high"  # a shrink was due, but measured waits are over target
    COOLDOWN = "cooldown"  # a change was due, but the last one is too recent
    LATENCY_HIGH = "latency_high"  # tutorial baseline: median latency over its upper threshold
    LATENCY_LOW = "latency_low"  # tutorial baseline: median latency under its lower threshold
    AT_MAX = "at_max"
    AT_MIN = "at_min"
    STEADY = "steady"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the daemon measured this tick. ``None`` means unknown (no data yet)."""

    now_s: float  # monotonic clock
    oldest_wait_s: float  # age of the oldest waiting message; 0.0 when none waits
    wait_p95_s: float | None  # p95 queue wait of recently started tasks
    depth: int  # messages waiting plus those held unacked by workers
    arrival_rate_per_s: float | None  # tasks enqueued per second over a short window
    service_time_s: float | None  # mean run time per task
    current_procs: int  # worker processes actually alive
    latency_p50_s: float | None = None  # median wait + run of tasks finished last tick (tutorial baseline only)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The policy's settings; the daemon builds them from ``inferpool.settings``."""

    wait_target_s: float = _setting_default("scaler_wait_target_s")  # target for the p95 queue wait
    wait_quantile: float = 0.95
    min_procs: int = 1  # the policy's own floor; the daemon passes work_concurrency_min
    max_procs: int = _setting_default("work_concurrency_max")
    window_s: float = _setting_default("scaler_scale_down_window_s")  # scale-down stabilisation window
    cooldown_s: float = _setting_default("scaler_cooldown_s")  # quiet time after any change
    backlog_deadline_s: float = 5.0  # clear the waiting work within this long
    service_prior_s: float = 0.05  # service time assumed before any task finished
    # Relative error of one arrival-rate sample. Up acts when even rate * (1 - load_noise) needs more
    # processes; every target is sized for rate * (1 + load_noise). A jump sized from a sample at the low
    # end of the noise then covers every later sample of that load: the noise moves nothing.
    load_noise: float = 0.2
    urgent_wait_factor: float = 2.0  # oldest wait over factor * target lets a model-driven up skip cooldown

    def __post_init__(self) -> None:
        if not 1 <= self.min_procs <= self.max_procs:
            raise ValueError("PolicyConfig needs 1 <= min_procs <= max_procs")
        if not 0.0 < self.wait_quantile < 1.0:
            raise ValueError("PolicyConfig.wait_quantile must be in (0, 1)")
        for name in ("wait_target_s", "backlog_deadline_s", "service_prior_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PolicyConfig.{name} must be positive")
        for name in ("window_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyConfig.{name} must not be negative")
        if not 0.0 <= self.load_noise < 1.0:
            raise ValueError("PolicyConfig.load_noise must be in [0, 1)")


class Sample(NamedTuple):
    """One tick remembered for the scale-down window."""

    now_s: float
    need: int  # processes sized for this tick's load (high end) and backlog


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Memory between ticks; start with ``PolicyState()``."""

    window_start_s: float | None = None  # first tick or last scale-up: no shrink before a whole window since
    last_change_s: float | None = None
    last_target: int | None = None  # last target issued (the pool may still be catching up)
    history: tuple[Sample, ...] = ()  # the ticks of the last window_s


@dataclass(frozen=True, slots=True)
class Decision:
    target: int
    direction: Direction
    reason: Reason
    need: int  # processes this tick's load is sized for, before bounds: for logs and metrics
    state: PolicyState


def wait_tail(procs: int, arrival_rate_per_s: float, service_time_s: float, t_s: float) -> float:
    """Erlang-C ``P(W > t_s)`` for M/M/c; 1.0 when ``procs`` cannot keep up."""
    a = arrival_rate_per_s * service_time_s
    if procs <= a:
        return 1.0
    erlang_b = 1.0
    for k in range(1, procs + 1):  # the stable recursion for Erlang-B, then B -> C
        erlang_b = a * erlang_b / (k + a * erlang_b)
    erlang_c = procs * erlang_b / (procs - a * (1.0 - erlang_b))
    return erlang_c * math.exp(-(procs / service_time_s - arrival_rate_per_s) * t_s)


def procs_for_rate(arrival_rate_per_s: float, service_time_s: float, cfg: PolicyConfig) -> int:
    """Smallest c meeting the wait target at this rate; 0 for no load, ``max_procs + 1`` if over max."""
    if arrival_rate_per_s <= 0:
        return 0
    tail = 1.0 - cfg.wait_quantile
    for c in range(1, cfg.max_procs + 1):
        if wait_tail(c, arrival_rate_per_s, service_time_s, cfg.wait_target_s) <= tail + _EPS:
            return c
    return cfg.max_procs + 1


def _need(rate: float, service_s: float, depth: int, cfg: PolicyConfig) -> tuple[int, int]:
    """(processes for the arrival rate, extra processes for the backlog).

    The rate-sized pool's spare capacity (c - a) already drains some backlog, so only the rest
    needs extra processes: the few messages a healthy pool always holds add nothing.
    """
    rate_procs = procs_for_rate(rate, service_s, cfg)
    spare = max(0.0, rate_procs - rate * service_s)
    backlog = depth * service_s / cfg.backlog_deadline_s  # processes busy for the whole deadline
    return rate_procs, max(0, math.ceil(backlog - spare - _EPS))


def _known(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) and x > 0 else 0.0


def decide(obs: Observation, state: PolicyState, cfg: PolicyConfig) -> Decision:
    """The target pool size for this tick and the state to pass to the next one."""
    now, cur, lo, hi = obs.now_s, obs.current_procs, cfg.min_procs, cfg.max_procs
    service_s = _known(obs.service_time_s) or cfg.service_prior_s
    rate = _known(obs.arrival_rate_per_s)
    # One sample is trusted only to +-load_noise: act up on its low end, size for its high end.
    rate_procs, backlog_procs = _need(rate * (1.0 - cfg.load_noise), service_s, obs.depth, cfg)
    need = rate_procs + backlog_procs
    sized = sum(_need(rate * (1.0 + cfg.load_noise), service_s, obs.depth, cfg))

    cutoff = now - cfg.window_s
    history = tuple(h for h in state.history if h.now_s >= cutoff) + (Sample(now, sized),)
    window_start = now if state.window_start_s is None else state.window_start_s
    base = replace(state, window_start_s=window_start, history=history)

    def hold(reason: Reason) -> Decision:
        return Decision(cur, Direction.HOLD, reason, sized, base)

    def change(target: int, reason: Reason) -> Decision:
        direction = Direction.UP if target > cur else Direction.DOWN
        new_state = replace(base, last_change_s=now, last_target=target)
        if direction is Direction.UP:  # the old window described a smaller load: start a new one
            new_state = replace(new_state, window_start_s=now, history=history[-1:])
        return Decision(target, direction, reason, sized, new_state)

    # Bounds first, skipping cooldown and window: a worker restarted with another size, or new settings.
    if cur < lo:
        return change(lo, Reason.AT_MIN)
    if cur > hi:
        return change(hi, Reason.AT_MAX)

    in_cooldown = state.last_change_s is not None and now - state.last_change_s < cfg.cooldown_s
    behind = obs.oldest_wait_s > cfg.wait_target_s
    urgent = obs.oldest_wait_s > cfg.urgent_wait_factor * cfg.wait_target_s
    # The model says enough, yet messages wait: a stuck backlog (nothing arrives, so nothing to size
    # from, e.g. long tasks hold every process) or a model that underestimates the load. Add one.
    nudge = need <= cur and ((behind and rate == 0.0) or urgent)

    if need > cur or nudge:
        target = max(sized, cur + 1)
        reason = Reason.ARRIVAL_RATE if rate_procs > cur else Reason.BACKLOG
        if nudge:
            reason = Reason.OLDEST_WAIT
        if target > hi:
            target, reason = hi, Reason.AT_MAX
        if target <= cur:
            return hold(Reason.AT_MAX)
        # Cooldown lets the last change show its effect before we judge again. A model-driven jump may
        # skip it when messages already wait over urgent_wait_factor * target AND the model asks for more
        # than it did last time: new evidence (the load grew again), not the old evidence seen again while
        # the processes just asked for are still starting. A blind nudge never skips it: it would add one
        # per tick while the backlog drains, and overshoot.
        bypass = urgent and not nudge and target > (state.last_target or 0)
        if in_cooldown and not bypass:
            return hold(Reason.COOLDOWN)
        return change(target, reason)

    if sized >= cur:
        return hold(Reason.STEADY)
    if cur == lo:
        return hold(Reason.AT_MIN)
    # Kubernetes HPA's downscale stabilisation: act on the largest need over the window, and only once
    # a whole window has passed since the first tick or the last scale-up.
    if now - window_start < cfg.window_s or max(h.need for h in history) >= cur:
        return hold(Reason.STABILISING)
    # Never shrink while waits are over target, whatever the model says.
    if behind or (obs.wait_p95_s is not None and obs.wait_p95_s > cfg.wait_target_s):
        return hold(Reason.WAIT_HIGH)
    if in_cooldown:
        return hold(Reason.COOLDOWN)
    return change(cur - 1, Reason.STABILISED_DOWN)
