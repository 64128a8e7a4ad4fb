"""The common tutorial's scaling recipe, kept as a baseline for the benchmark (``INFERPOOL_SCALER_POLICY=tutorial``).

Each tick: one process more when the median latency is over the wait target (100 ms), one fewer when it
is under half of it (50 ms), bounded by min and max; no model, no window, no cooldown. Same signature as
:func:`scaler.policy.decide`, so the same daemon and actuators run it.

"Latency" is the median of queue wait + run time of the managed queue's tasks finished since the last
tick (``Observation.latency_p50_s``): the tasks this pool serves. With no task finished it holds.
"""

from __future__ import annotations

from dataclasses import replace

from scaler.policy import Decision, Direction, Observation, PolicyConfig, PolicyState, Reason

LOW_FRACTION = 0.5  # scale down under this fraction of the target (50 ms of 100 ms)


def decide_tutorial(obs: Observation, state: PolicyState, cfg: PolicyConfig) -> Decision:
    cur, lo, hi = obs.current_procs, cfg.min_procs, cfg.max_procs
    latency = obs.latency_p50_s

    def out(target: int, reason: Reason) -> Decision:
        if target == cur:
            return Decision(cur, Direction.HOLD, reason, cur, state)
        direction = Direction.UP if target > cur else Direction.DOWN
        return Decision(target, direction, reason, target, replace(state, last_change_s=obs.now_s, last_target=target))

    if cur < lo:
        return out(lo, Reason.AT_MIN)
    if cur > hi:
        return out(hi, Reason.AT_MAX)
    if latency is None:
        return out(cur, Reason.STEADY)
    if latency > cfg.wait_target_s:
        return out(cur + 1, Reason.LATENCY_HIGH) if cur < hi else out(cur, Reason.AT_MAX)
    if latency < LOW_FRACTION * cfg.wait_target_s:
        return out(cur - 1, Reason.LATENCY_LOW) if cur > lo else out(cur, Reason.AT_MIN)
    return out(cur, Reason.STEADY)
