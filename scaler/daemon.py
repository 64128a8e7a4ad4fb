"""The scaler loop: observe → decide → act, once a tick, until SIGTERM/SIGINT.

Each tick reads a :class:`~scaler.load_signal.Signal`, asks the policy for a target, has the actuator apply it
(unless dry-run), then records in Redis: the state hash (``keys.SCALER_STATE``: desired, actual, updated
and the signal), the last 200 changes (``keys.SCALER_DECISIONS``, newest first, read by
``inferpool.status``) and an expiring health key (``keys.SCALER_HEALTH``). Every decision is logged with
its reason (holds at DEBUG) and counted in ``inferpool_scaler_decisions_total{direction,reason}``.

Failure behaviour: a Redis error (restart, network) or a vanished worker fails only that tick's stage;
it is logged and counted, and the next tick starts over. A change the actuator could not make at all
(every process busy, no reply) leaves the policy state as it was, so the next tick asks again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import redis

from inferpool import keys
from inferpool.settings import Settings
from scaler.actuators import Actuator, Outcome
from scaler.load_signal import Signal, SignalReader
from scaler.metrics import ScalerMetrics
from scaler.policy import Decision, Direction, Observation, PolicyConfig, PolicyState, decide
from scaler.tutorial import decide_tutorial

logger = logging.getLogger(__name__)

DECISIONS_KEPT = 200
HEALTH_TTL_TICKS = 5  # the health key outlives this many missed ticks
HEALTH_MIN_TTL_S = 5

Policy = Callable[[Observation, PolicyState, PolicyConfig], Decision]
POLICIES: dict[str, Policy] = {"erlang": decide, "tutorial": decide_tutorial}


def policy_config(s: Settings) -> PolicyConfig:
    return PolicyConfig(
        wait_target_s=s.scaler_wait_target_s,
        min_procs=s.work_concurrency_min,
        max_procs=s.work_concurrency_max,
        window_s=s.scaler_scale_down_window_s,
        cooldown_s=s.scaler_cooldown_s,
    )


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


class Scaler:
    """One scaler: a signal reader, a policy, an actuator, and where it records what it did."""

    def __init__(
        self,
        client: redis.Redis,
        reader: SignalReader,
        actuator: Actuator,
        cfg: PolicyConfig,
        policy: str = "erlang",
        *,
        dry_run: bool = False,
        tick_s: float = 1.0,
        metrics: ScalerMetrics | None = None,
    ) -> None:
        self.client, self.reader, self.actuator, self.cfg = client, reader, actuator, cfg
        self.policy_name, self.policy = policy, POLICIES[policy]
        self.dry_run, self.tick_s = dry_run, tick_s
        self.metrics = metrics or ScalerMetrics(reader.queue)
        self.state = PolicyState()
        self.desired: int | None = None
        self.stop_event = threading.Event()
        self._failing: set[str] = set()  # stages whose last attempt failed: log the first failure loudly

    def _bounded(self, sig: Signal) -> PolicyConfig | None:
        """The policy's config with max lowered to what the actuator can reach; None when it can reach nothing."""
        cap = self.actuator.capacity(sig.workers)
        if cap is None:
            return self.cfg
        if cap < 1:
            return None
        return replace(self.cfg, max_procs=max(self.cfg.min_procs, min(self.cfg.max_procs, cap)))

    def _failed(self, stage: str, exc: BaseException) -> None:
        self.metrics.error(stage)
        if stage in self._failing:
            logger.debug("%s failed again: %s: %s", stage, type(exc).__name__, exc)
        else:
            logger.warning("%s failed: %s: %s; retrying every tick", stage, type(exc).__name__, exc)
            self._failing.add(stage)

    def _recovered(self, stage: str) -> None:
        if stage in self._failing:
            self._failing.discard(stage)
            logger.info("%s works again", stage)

    def tick(self) -> Decision | None:
        """One observe → decide → act → record pass; None when nothing could be decided."""
        try:
            sig = self.reader.read()
            actual = self.actuator.current(sig.workers)
        except Exception as exc:  # Redis down or restarting: nothing to decide on
            self._failed("observe", exc)
            return None
        self._recovered("observe")
        self.metrics.set_signal(sig)
        cfg = self._bounded(sig)
        if cfg is None:
            missing = LookupError(f"no live worker consumes {sig.queue} with name prefix {self.reader.prefix!r}")
            self._failed("workers", missing)
            self._record(None, actual, sig, None)
            return None
        self._recovered("workers")
        d = self.policy(sig.observation(actual), self.state, cfg)
        outcome = None
        if d.direction is Direction.HOLD:
            logger.debug(
                "hold at %d: %s (need %d; rate %s/s, depth %d, oldest wait %.3f s)",
                actual, d.reason, d.need, _round(sig.arrival_rate_per_s, 2), sig.depth, sig.oldest_wait_s,
            )  # fmt: skip
            self.metrics.decision(d.direction.value, d.reason.value)
            self.state = d.state
            if not self.dry_run:
                self.desired = d.target
        else:
            outcome = None if self.dry_run else self._act(d, sig)
            if outcome is not None and not outcome.changed and not outcome.complete:
                # Nothing could move (every process busy, a shrink still in flight, no reply): the policy
                # state stays as it was, so the next tick decides the same again without a cooldown.
                logger.debug("%s %d -> %d deferred: %s", d.direction.value, actual, d.target, outcome.detail)
                self.metrics.decision("deferred", d.reason.value)
                self._record(None, actual, sig, outcome, reason=f"deferred_{d.reason.value}", need=d.need)
                return d
            self.metrics.decision(d.direction.value, d.reason.value)
            self.state, self.desired = d.state, d.target
            logger.info(
                "%s %d -> %d: %s%s (need %d; rate %s/s, service %s s, depth %d, oldest wait %.3f s, p95 wait %s s)%s",
                d.direction.value, actual, d.target, d.reason, " [dry run]" if self.dry_run else "", d.need,
                _round(sig.arrival_rate_per_s, 2), _round(sig.service_time_s), sig.depth, sig.oldest_wait_s,
                _round(sig.wait_p95_s), "" if outcome is None or outcome.complete else f"; {outcome.detail}",
            )  # fmt: skip
        self.metrics.set_pool(
            desired=self.desired if self.desired is not None else actual,
            actual=actual,
            min=cfg.min_procs,
            max=cfg.max_procs,
            need=d.need,
        )
        self._record(d, actual, sig, outcome)
        return d

    def _act(self, d: Decision, sig: Signal) -> Outcome:
        try:
            return self.actuator.apply(d.target, sig.workers, d.reason.value)
        except Exception as exc:  # a worker vanished mid-command, the broker went away
            self._failed("act", exc)
            return Outcome(0, False, f"{type(exc).__name__}: {exc}")

    def _record(
        self, d: Decision | None, actual: int, sig: Signal, outcome: Outcome | None, reason: str = "", need: int = 0
    ) -> None:
        now = time.time()
        desired = self.desired if self.desired is not None else actual
        state = {
            "desired": desired, "actual": actual, "updated": now, "policy": self.policy_name,
            "actuator": self.actuator.name, "dry_run": int(self.dry_run), "queue": sig.queue,
            "workers": len(sig.workers), "depth": sig.depth, "oldest_wait_s": round(sig.oldest_wait_s, 4),
            "reason": d.reason.value if d else reason or "no_workers", "need": d.need if d else need,
        }  # fmt: skip
        for name in ("arrival_rate_per_s", "service_time_s", "wait_p95_s"):
            value = getattr(sig, name)
            state[name] = "" if value is None else round(value, 4)
        health = {"t": now, "pid": os.getpid(), "desired": desired, "actual": actual, "dry_run": self.dry_run}
        ttl_s = max(HEALTH_MIN_TTL_S, int(HEALTH_TTL_TICKS * self.tick_s))
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(keys.SCALER_STATE, mapping=state)
            pipe.set(keys.SCALER_HEALTH, orjson.dumps(health), ex=ttl_s)
            if d is not None and d.direction is not Direction.HOLD:
                entry = {
                    "t": now, "direction": d.direction.value, "reason": d.reason.value, "from": actual,
                    "to": d.target, "need": d.need, "dry_run": self.dry_run,
                    "done": None if outcome is None else outcome.complete,
                }  # fmt: skip
                pipe.lpush(keys.SCALER_DECISIONS, orjson.dumps(entry))
                pipe.ltrim(keys.SCALER_DECISIONS, 0, DECISIONS_KEPT - 1)
            pipe.execute()
        except Exception as exc:
            self._failed("record", exc)
        else:
            self._recovered("record")

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self, once: bool = False) -> None:
        """Tick every ``tick_s`` until stopped (SIGTERM/SIGINT when run from the main thread)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        logger.info(
            "scaler: queue %s, workers %s*, policy %s, actuator %s, %d..%d processes, wait target %.0f ms%s",
            self.reader.queue, self.reader.prefix, self.policy_name, self.actuator.name, self.cfg.min_procs,
            self.cfg.max_procs, self.cfg.wait_target_s * 1000, " (dry run)" if self.dry_run else "",
        )  # fmt: skip
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                self.tick()
                if once:
                    break
                self.stop_event.wait(max(0.0, self.tick_s - (time.monotonic() - started)))
        finally:
            logger.info("scaler stopping")
            self.actuator.close()
