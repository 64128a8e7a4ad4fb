"""The scaler policy, fed recorded signals: lists of Observations replayed tick by tick (1 s apart).

The replay stands in for the pool: each tick's ``current_procs`` is the previous decision's target,
i.e. a perfect actuator, so every change the policy asks for is counted.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from scaler.policy import (
    Decision,
    Direction,
    Observation,
    PolicyConfig,
    PolicyState,
    Reason,
    decide,
    procs_for_rate,
    wait_tail,
)

CFG = PolicyConfig(max_procs=16)
TUTORIAL_SERVICE_S = 0.6 * 0.01 + 0.25 * 0.06 + 0.15 * 0.21  # mixed work: ~0.053 s per task


def tick(
    t: float,
    rate: float | None,
    *,
    service_s: float | None = 0.05,
    depth: int = 0,
    oldest_s: float = 0.0,
    p95_s: float | None = 0.02,
    procs: int = 1,
) -> Observation:
    return Observation(float(t), oldest_s, p95_s, depth, rate, service_s, procs)


def noisy(rate: float, ticks: int, start_s: float, rng: random.Random, service_s: float = 0.05) -> list[Observation]:
    """A steady load measured with +-20% noise, and the small queue and waits such a load shows."""
    return [
        tick(
            start_s + i,
            rate * rng.uniform(0.8, 1.2),
            service_s=service_s,
            depth=rng.randint(0, 3),
            oldest_s=rng.uniform(0.0, 0.03),
            p95_s=rng.uniform(0.005, 0.06),
        )
        for i in range(ticks)
    ]


def replay(signal: list[Observation], procs: int, cfg: PolicyConfig = CFG) -> list[Decision]:
    state, out = PolicyState(), []
    for obs in signal:
        d = decide(replace(obs, current_procs=procs), state, cfg)
        out.append(d)
        state, procs = d.state, d.target
    return out


def changes(decisions: list[Decision]) -> list[tuple[int, int, Reason]]:
    """(tick index, target, reason) of every decision that was not a hold."""
    return [(i, d.target, d.reason) for i, d in enumerate(decisions) if d.direction is not Direction.HOLD]


def test_erlang_c_by_hand() -> None:
    # c=2, a=1.5: C = 4.5 / 7; P(W > 0.1) = C * exp(-(40 - 30) * 0.1)
    assert wait_tail(2, 30.0, 0.05, 0.1) == pytest.approx(4.5 / 7 * math.exp(-1.0))
    assert wait_tail(1, 30.0, 0.05, 0.1) == 1.0  # a = 1.5 > 1 process: unstable
    assert procs_for_rate(30.0, 0.05, CFG) == 3  # c=2 gives 0.24 > 0.05; c=3 gives 0.012
    assert procs_for_rate(0.0, 0.05, CFG) == 0
    assert procs_for_rate(1e6, 0.05, CFG) == CFG.max_procs + 1


def test_step_up_is_answered_within_one_tick_by_a_proportional_jump() -> None:
    signal = [tick(t, 30.0) for t in range(40)] + [tick(t, 90.0) for t in range(40, 60)]
    decisions = replay(signal, procs=3)
    expected = procs_for_rate(90.0 * (1 + CFG.load_noise), 0.05, CFG)
    assert changes(decisions) == [(40, expected, Reason.ARRIVAL_RATE)]
    assert expected >= 3 + 3  # straight to the need, not +1


def test_step_down_waits_the_window_then_descends_one_step_per_cooldown_to_min() -> None:
    signal = [tick(t, 90.0) for t in range(40)] + [tick(t, 0.0, p95_s=None) for t in range(40, 120)]
    decisions = replay(signal, procs=procs_for_rate(90.0 * 1.2, 0.05, CFG))
    downs = changes(decisions)
    start = procs_for_rate(90.0 * 1.2, 0.05, CFG)
    assert [target for _, target, _ in downs] == list(range(start - 1, CFG.min_procs - 1, -1))
    assert all(reason is Reason.STABILISED_DOWN for _, _, reason in downs)
    assert downs[0][0] - 40 >= CFG.window_s  # the 90 req/s need was in the window until then
    assert all(b[0] - a[0] >= CFG.cooldown_s for a, b in zip(downs, downs[1:], strict=False))
    assert decisions[-1].target == CFG.min_procs and decisions[-1].reason is Reason.AT_MIN


@pytest.mark.parametrize("seed", range(20))
def test_steady_noisy_load_changes_nothing(seed: int) -> None:
    """30 req/s +-20%, 0.05 s per task, from a cold start: the first tick sizes the pool, then 300 holds."""
    decisions = replay(noisy(30.0, 301, 0.0, random.Random(seed)), procs=CFG.min_procs)
    assert decisions[0].direction is Direction.UP
    assert changes(decisions[1:]) == []


def test_tutorial_scenario_steady_phases_take_no_action() -> None:
    """30 req/s of mixed work, a step to 90, back to 30: 120 s each; actions only at the transitions."""
    rng = random.Random(7)
    signal = (
        noisy(30.0, 120, 0.0, rng, TUTORIAL_SERVICE_S)
        + noisy(90.0, 120, 120.0, rng, TUTORIAL_SERVICE_S)
        + noisy(30.0, 180, 240.0, rng, TUTORIAL_SERVICE_S)
    )
    decisions = replay(signal, procs=1)
    acts = changes(decisions)
    in_phase = [(i, target) for i, target, _ in acts if 0 < i < 120 or 120 < i < 240 or i >= 300]
    assert in_phase == []
    assert acts[0][0] == 0 and acts[1][0] == 120  # the cold start, the step up: one action each
    assert acts[1][1] - decisions[119].target >= 3  # proportional
    descent = acts[2:]
    assert descent and all(r is Reason.STABILISED_DOWN for _, _, r in descent)
    window = int(CFG.window_s)
    for i, target, _ in descent:  # every need over the whole window was below the pool it shrank
        assert max(d.need for d in decisions[i - window : i + 1]) <= target
    assert [t for _, t, _ in descent] == list(range(acts[1][1] - 1, descent[-1][1] - 1, -1))  # one at a time
    # back at the 30 req/s size it started with, give or take the +-20% hysteresis band
    assert abs(decisions[-1].target - decisions[119].target) <= 1


def test_bounds() -> None:
    cfg = PolicyConfig(min_procs=2, max_procs=5)
    d = decide(tick(0, 1000.0, procs=2), PolicyState(), cfg)
    assert (d.target, d.direction, d.reason) == (5, Direction.UP, Reason.AT_MAX)
    d = decide(tick(10, 1000.0, procs=5), d.state, cfg)
    assert (d.target, d.direction, d.reason) == (5, Direction.HOLD, Reason.AT_MAX)
    assert decide(tick(0, 0.0, procs=2), PolicyState(), cfg).reason is Reason.AT_MIN
    # out of bounds (a worker restarted with another size): corrected at once
    assert decide(tick(0, 0.0, procs=1), PolicyState(), cfg).target == 2
    assert decide(tick(0, 0.0, procs=9), PolicyState(), cfg).target == 5


def test_no_load_and_no_backlog_goes_to_min() -> None:
    decisions = replay([tick(t, None, service_s=None, p95_s=None) for t in range(60)], procs=4)
    assert [target for _, target, _ in changes(decisions)] == [3, 2, 1]
    assert changes(decisions)[0][0] >= CFG.window_s  # no shrink before a whole window was seen


def test_cooldown_is_respected_unless_messages_wait_urgently_and_the_load_grew() -> None:
    first = decide(tick(0, 60.0, procs=1), PolicyState(), CFG)
    assert first.direction is Direction.UP
    grown = tick(1, 150.0, procs=first.target)
    d = decide(grown, first.state, CFG)
    assert (d.direction, d.reason) == (Direction.HOLD, Reason.COOLDOWN)
    assert decide(replace(grown, now_s=CFG.cooldown_s), first.state, CFG).direction is Direction.UP
    # messages already wait over 2x target and the model asks for more than last time: skip cooldown
    d = decide(replace(grown, oldest_wait_s=0.25), first.state, CFG)
    assert (d.direction, d.reason) == (Direction.UP, Reason.ARRIVAL_RATE)
    # but the same evidence again, while the processes just asked for start, does not
    same = decide(tick(1, 60.0, oldest_s=0.25, procs=1), first.state, CFG)
    assert (same.direction, same.reason) == (Direction.HOLD, Reason.COOLDOWN)


def test_backlog_adds_processes() -> None:
    base = procs_for_rate(30.0 * 1.2, 0.05, CFG)
    d = decide(tick(0, 30.0, depth=1000, procs=3), PolicyState(), CFG)
    # 1000 x 0.05 s = 50 s of work in 5 s: 10 processes, less the spare capacity of the rate-sized pool
    assert (d.direction, d.reason) == (Direction.UP, Reason.BACKLOG)
    assert d.target == base + math.ceil(10 - (base - 30.0 * 1.2 * 0.05))
    # the few messages a healthy pool always holds add nothing
    assert decide(tick(0, 30.0, depth=5, procs=3), PolicyState(), CFG).direction is Direction.HOLD


def test_stuck_backlog_with_no_arrivals_scales_up() -> None:
    d = decide(tick(0, 0.0, depth=3, oldest_s=0.5, procs=1), PolicyState(), CFG)
    assert (d.target, d.direction, d.reason) == (2, Direction.UP, Reason.OLDEST_WAIT)


def test_unknown_service_time_uses_the_prior() -> None:
    unknown = decide(tick(0, 80.0, service_s=None), PolicyState(), CFG)
    prior = decide(tick(0, 80.0, service_s=CFG.service_prior_s), PolicyState(), CFG)
    assert unknown.target == prior.target > 1


def test_no_shrink_while_waits_are_over_target() -> None:
    signal = [tick(t, 0.0, p95_s=0.3) for t in range(60)]
    decisions = replay(signal, procs=4)
    assert changes(decisions) == []
    assert decisions[-1].reason is Reason.WAIT_HIGH


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_procs"):
        PolicyConfig(min_procs=5, max_procs=2)
    with pytest.raises(ValueError, match="wait_target_s"):
        PolicyConfig(wait_target_s=0)
