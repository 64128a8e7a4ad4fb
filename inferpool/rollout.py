"""Rollout plans and their verdicts: pure logic, no I/O (``inferpool.rollout_store`` keeps plans in Redis).

A plan moves traffic from ``stable`` to ``candidate``:

* *canary*: a request goes to the candidate when the hash of its routing key (a request header, else the
  caller's API key id) falls under the step's share; shares only grow, so a caller once on the candidate
  stays there, and each caller sees one version per step;
* *shadow*: callers always get the stable answer; a sampled share of requests is also run by the
  candidate, and the two answers are compared.

A step advances only when its window (``step_s``) has passed with at least ``min_requests`` candidate
requests and no breach; a breach (error ratio, p99 model time, accuracy against feedback labels, each past
its margin over the stable version's figure in the same window) rolls back at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    canary = "canary"
    shadow = "shadow"


class State(StrEnum):
    running = "running"
    paused = "paused"
    promoted = "promoted"  # ended: the candidate is stable now
    rolled_back = "rolled_back"  # ended by a breach: the stable version serves
    aborted = "aborted"  # ended by an operator: the stable version serves


ENDED = (State.promoted, State.rolled_back, State.aborted)
# Candidate errors before an error-ratio breach can be called, whatever the ratio.
MIN_ERRORS = 3


class Action(StrEnum):
    hold = "hold"
    advance = "advance"
    promote = "promote"
    rollback = "rollback"


@dataclass(frozen=True)
class Margins:
    """How much worse than the stable version the candidate may be over a step's window."""

    error_ratio: float  # absolute, e.g. 0.01: one point more of failed requests
    p99_ratio: float  # candidate p99 model time may be this multiple of the stable's...
    p99_slack_ms: float  # ...plus this much (timer noise on sub-millisecond models)
    accuracy: float  # absolute drop allowed with feedback labels
    min_labels: int  # labelled predictions of each version before accuracy is judged
    breach_min_requests: int  # candidate requests before a breach can be called
    p99_min_samples: int  # model times of each version before p99 is compared (fewer: p99 is the max)


@dataclass(frozen=True)
class VersionStats:
    """One version's figures over one step's window (read from Redis by ``rollout_store``)."""

    requests: int = 0
    errors: int = 0
    model_ms: tuple[float, ...] = ()  # model time of recent tasks (ms), newest first, capped
    classes: dict[str, int] = field(default_factory=dict)  # predicted class -> rows
    labelled: int = 0
    correct: int = 0
    compared: int = 0  # shadow: rows answered by both versions
    disagreed: int = 0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        return quantile(self.model_ms, 0.99)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def disagreement(self) -> float | None:
        return self.disagreed / self.compared if self.compared else None


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    at: float
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "at": self.at, "figures": self.figures}


@dataclass(frozen=True)
class Plan:
    id: str
    mode: Mode
    stable: str
    candidate: str
    steps: tuple[float, ...]  # canary: candidate share per step (%); shadow: one step, the sampled share (%)
    step_s: float
    min_requests: int
    started_at: float
    started_by: str
    step: int = 0
    step_started: float = 0.0
    state: State = State.running
    rev: int = 0  # bumped by every change: writers compare it (rollout_store.replace)
    last_verdict: dict[str, Any] | None = None

    @property
    def share(self) -> float:
        """The candidate's share of answers now (0..1): what callers get from it."""
        if self.state is State.promoted:
            return 1.0
        if self.state in ENDED or self.mode is Mode.shadow:
            return 0.0
        return self.steps[self.step] / 100.0

    @property
    def shadow_share(self) -> float:
        active = self.mode is Mode.shadow and self.state in (State.running, State.paused)
        return self.steps[0] / 100.0 if active else 0.0

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions this plan may answer with now."""
        if self.state is State.promoted:
            return (self.candidate,)
        if self.state in ENDED:
            return (self.stable,)
        return (self.stable, self.candidate)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"], d["state"], d["steps"] = self.mode.value, self.state.value, list(self.steps)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(**{**d, "mode": Mode(d["mode"]), "state": State(d["state"]), "steps": tuple(d["steps"])})


def bucket(plan_id: str, routing_key: str) -> float:
    """Where a routing key falls in [0, 1) for this plan: fixed for the plan's life, uniform over keys."""
    digest = hashlib.blake2b(f"{plan_id}:{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose(plan: Plan | None, routing_key: str, default: str) -> str:
    """The version that answers a request: ``default`` (the served manifest) when no plan exists."""
    if plan is None:
        return default
    if plan.state is State.promoted:
        return plan.candidate
    share = plan.share
    return plan.candidate if share > 0 and bucket(plan.id, routing_key) < share else plan.stable


def quantile(values: tuple[float, ...] | list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def mix_difference(a: dict[str, int], b: dict[str, int]) -> float | None:
    """Total variation distance between two predicted-class mixes (0: same mix, 1: disjoint)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return None
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def figures(stable: VersionStats, cand: VersionStats) -> dict[str, Any]:
    """What a verdict records: both versions' figures and the prediction-mix difference."""
    return {
        "stable": {"requests": stable.requests, "error_ratio": stable.error_ratio, "p99_ms": stable.p99_ms,
                   "accuracy": stable.accuracy},
        "candidate": {"requests": cand.requests, "error_ratio": cand.error_ratio, "p99_ms": cand.p99_ms,
                      "accuracy": cand.accuracy, "disagreement": cand.disagreement},
        "prediction_mix_difference": mix_difference(stable.classes, cand.classes),
    }  # fmt: skip


def breach(stable: VersionStats, cand: VersionStats, m: Margins) -> str | None:
    """Why the candidate is worse than the margins allow, or None."""
    # A lone error (a timeout on a busy machine) is no evidence: a breach needs MIN_ERRORS of them.
    enough = cand.requests >= m.breach_min_requests and cand.errors >= MIN_ERRORS
    if enough and cand.error_ratio > stable.error_ratio + m.error_ratio:
        return (
            f"error ratio {cand.error_ratio:.3f} over the stable's {stable.error_ratio:.3f} "
            f"+ {m.error_ratio:g} ({cand.errors} of {cand.requests} requests)"
        )
    if min(len(cand.model_ms), len(stable.model_ms)) >= m.p99_min_samples:
        c99, s99 = cand.p99_ms or 0.0, stable.p99_ms or 0.0
        c50, s50 = quantile(cand.model_ms, 0.5) or 0.0, quantile(stable.model_ms, 0.5) or 0.0
        # The median must be slower too: on a shared machine a few preempted tasks move a p99 of a few hundred
        # samples by 2-3x for either version (measured: a candidate identical in cost "breached" so), while a
        # slower model moves the whole distribution. A candidate slow only in its tail is not caught by this.
        if c99 > s99 * m.p99_ratio + m.p99_slack_ms and c50 > s50 * m.p99_ratio:
            return (
                f"p99 model time {c99:.1f} ms over the stable's {s99:.1f} ms x {m.p99_ratio:g} + {m.p99_slack_ms:g} ms "
                f"(median {c50:.1f} ms against {s50:.1f} ms)"
            )
    ca, sa = cand.accuracy, stable.accuracy
    labelled = min(cand.labelled, stable.labelled) >= m.min_labels
    if ca is not None and sa is not None and labelled and ca < sa - m.accuracy:
        return f"accuracy {ca:.3f} under the stable's {sa:.3f} - {m.accuracy:g} ({cand.labelled} labels)"
    return None


def judge(plan: Plan, stable: VersionStats, cand: VersionStats, m: Margins, now: float) -> Verdict:
    """The next action for a running plan, from both versions' figures over the current step's window."""
    figs = figures(stable, cand)
    why = breach(stable, cand, m)
    if why:
        return Verdict(Action.rollback, why, now, figs)
    elapsed = now - plan.step_started
    if elapsed < plan.step_s:
        return Verdict(Action.hold, f"step window {elapsed:.0f} of {plan.step_s:g} s", now, figs)
    if cand.requests < plan.min_requests:
        return Verdict(Action.hold, f"{cand.requests} of {plan.min_requests} candidate requests", now, figs)
    timed = min(len(cand.model_ms), len(stable.model_ms))
    if timed < m.p99_min_samples:
        # Never advance on a latency that could not be judged.
        return Verdict(Action.hold, f"{timed} of {m.p99_min_samples} model times to compare p99", now, figs)
    if plan.mode is Mode.shadow:
        return Verdict(Action.hold, "shadow window passed within margins; advance to promote", now, figs)
    if plan.step + 1 >= len(plan.steps):
        return Verdict(Action.promote, "last step passed within margins", now, figs)
    return Verdict(Action.advance, f"step {plan.step} ({plan.steps[plan.step]:g} %) passed within margins", now, figs)


def apply(plan: Plan, action: Action, now: float) -> Plan:
    """The plan after ``action`` (hold changes nothing but the caller's record of the verdict)."""
    if action is Action.advance:
        if plan.mode is Mode.shadow or plan.step + 1 >= len(plan.steps):
            return replace(plan, state=State.promoted, rev=plan.rev + 1)
        return replace(plan, step=plan.step + 1, step_started=now, rev=plan.rev + 1)
    if action is Action.promote:
        return replace(plan, state=State.promoted, rev=plan.rev + 1)
    if action is Action.rollback:
        return replace(plan, state=State.rolled_back, rev=plan.rev + 1)
    return plan


def describe(plan: Plan | None) -> str:
    """One line for ``inferpool status``: the plan, the shares and the last verdict."""
    if plan is None:
        return "rollout: none (every answer from the stable version)"
    where = (
        f"shadow copy of {plan.steps[0]:g} %" if plan.mode is Mode.shadow else f"{100 * plan.share:g} % to candidate"
    )
    line = (
        f"rollout {plan.id} {plan.mode.value} {plan.state.value}: {plan.stable} -> {plan.candidate}, {where} "
        f"(step {plan.step + 1} of {len(plan.steps)})"
    )
    v = plan.last_verdict
    return line + (f"; last verdict {v['action']}: {v['reason']}" if v else "")


def parse_steps(text: str) -> tuple[float, ...]:
    """``"5,25,50,100"`` -> (5.0, 25.0, 50.0, 100.0); each in (0, 100], increasing. Raises ValueError."""
    steps = tuple(float(p) for p in text.split(",") if p.strip())
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError("steps must be increasing percentages in (0, 100], e.g. 5,25,50,100")
    return steps
