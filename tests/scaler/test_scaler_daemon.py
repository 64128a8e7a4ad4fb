"""The scaler loop on a real Redis: what it records, dry run, retries, Redis restarts; the tutorial baseline.

Signals are replayed from recordings (a scripted reader) where the loop's logic is under test, and read
from Redis by the real reader where surviving Redis is. The actuator is a recording stand-in.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from inferpool import keys, status
from inferpool.redis_client import async_client
from inferpool.settings import get_settings
from scaler.actuators import Outcome
from scaler.cli import settings_from_args
from scaler.daemon import Scaler, policy_config
from scaler.load_signal import Signal, SignalReader, WorkerView
from scaler.policy import Direction, Observation, PolicyConfig, PolicyState, Reason
from scaler.tutorial import decide_tutorial

CFG = PolicyConfig(min_procs=1, max_procs=8, window_s=30.0, cooldown_s=3.0)
WORKERS = (WorkerView("work@box", "box", 1, 1, 0, 0.0),)


def signal_at(t: float, rate: float | None, procs_ignored: int = 0, **kw) -> Signal:
    base = dict(now_s=t, queue=keys.QUEUE_WORK, waiting=0, held=0, oldest_wait_s=0.0, arrival_rate_per_s=rate,
                service_time_s=0.1, wait_p95_s=0.02, latency_p50_s=None, completed=0, workers=WORKERS)  # fmt: skip
    return Signal(**{**base, **kw})


class ScriptedReader:
    queue, prefix = keys.QUEUE_WORK, "work"

    def __init__(self, signals: list[Signal]) -> None:
        self.signals: Iterator[Signal] = iter(signals)

    def read(self) -> Signal:
        return next(self.signals)


class RecordingActuator:
    """Applies every change perfectly unless told to refuse; records (target, reason)."""

    name = "recording"

    def __init__(self, procs: int = 1, refuse: bool = False) -> None:
        self.procs, self.refuse, self.applied, self.closed = procs, refuse, [], False

    def current(self, workers) -> int:
        return self.procs

    def capacity(self, workers) -> int | None:
        return len(workers) * 8

    def apply(self, target: int, workers, reason: str) -> Outcome:
        self.applied.append((target, reason))
        if self.refuse:
            return Outcome(0, False, "all busy")
        changed, self.procs = target - self.procs, target
        return Outcome(changed, True, "ok")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def client(fresh_redis) -> redis.Redis:
    return redis.Redis.from_url(fresh_redis.url)


def test_a_change_is_applied_logged_recorded_and_exported(client, fresh_redis, caplog) -> None:
    act = RecordingActuator(procs=1)
    sc = Scaler(client, ScriptedReader([signal_at(0, 30.0), signal_at(1, 30.0)]), act, CFG, tick_s=1.0)
    with caplog.at_level("INFO", logger="scaler.daemon"):
        first = sc.tick()
    assert first.direction is Direction.UP and act.applied == [(first.target, "arrival_rate")]
    assert f"up 1 -> {first.target}: arrival_rate" in caplog.text
    assert sc.tick().reason is Reason.STEADY  # at the need now: hold, nothing applied
    assert len(act.applied) == 1

    h = client.hgetall(keys.SCALER_STATE)
    assert (int(h[b"desired"]), int(h[b"actual"])) == (first.target, first.target)
    assert time.time() - float(h[b"updated"]) < 5
    assert 0 < client.ttl(keys.SCALER_HEALTH) <= 5
    [entry] = [orjson.loads(e) for e in client.lrange(keys.SCALER_DECISIONS, 0, -1)]
    assert {k: entry[k] for k in ("direction", "reason", "from", "to")} == {
        "direction": "up", "reason": "arrival_rate", "from": 1, "to": first.target,
    }  # fmt: skip
    # the monitoring status endpoint reads what the scaler wrote
    view = asyncio.run(_status(fresh_redis.url))
    assert view["scaler"]["desired"] == first.target and view["scaler"]["decisions"][0]["to"] == first.target

    reg = CollectorRegistry()
    reg.register(sc.metrics)
    text = generate_latest(reg).decode()
    assert 'inferpool_scaler_decisions_total{direction="up",reason="arrival_rate"} 1.0' in text
    assert 'inferpool_scaler_decisions_total{direction="hold",reason="steady"} 1.0' in text
    assert f'inferpool_scaler_desired_processes{{queue="inferpool.work"}} {first.target}.0' in text
    assert 'inferpool_scaler_max_processes{queue="inferpool.work"} 8.0' in text
    assert 'inferpool_scaler_arrivals_per_second{queue="inferpool.work"} 30.0' in text


async def _status(url: str) -> dict:
    c = async_client(url)
    try:
        return await status.collect(c)
    finally:
        await c.aclose()


def test_decisions_list_is_capped(client) -> None:
    signals = [signal_at(t * 10.0, 60.0 if t % 2 == 0 else 0.0, wait_p95_s=None) for t in range(400)]
    sc = Scaler(client, ScriptedReader(signals), RecordingActuator(), replace(CFG, window_s=0, cooldown_s=0))
    for _ in signals:
        sc.tick()
    assert client.llen(keys.SCALER_DECISIONS) == 200


def test_dry_run_decides_and_records_but_changes_nothing(client) -> None:
    act = RecordingActuator(procs=1)
    sc = Scaler(client, ScriptedReader([signal_at(0, 60.0)]), act, CFG, dry_run=True)
    d = sc.tick()
    assert d.direction is Direction.UP and act.applied == []
    entry = orjson.loads(client.lindex(keys.SCALER_DECISIONS, 0))
    assert entry["dry_run"] is True and entry["to"] == d.target
    assert int(client.hget(keys.SCALER_STATE, "actual")) == 1


def test_a_change_the_actuator_could_not_make_is_asked_again_next_tick(client) -> None:
    act = RecordingActuator(procs=4, refuse=True)
    idle = [signal_at(t, 0.0, wait_p95_s=None) for t in range(40)]
    sc = Scaler(client, ScriptedReader(idle), act, replace(CFG, window_s=30.0, cooldown_s=3.0))
    for _ in idle:
        sc.tick()
    # every process busy: no cooldown was started by the refused shrinks, each tick after the window retries
    assert act.applied == [(3, "stabilised_down")] * (40 - 30)
    assert sc.metrics.decisions[("deferred", "stabilised_down")] == 10
    assert client.llen(keys.SCALER_DECISIONS) == 0  # nothing happened: nothing in the decision list
    assert client.hget(keys.SCALER_STATE, "reason") == b"deferred_stabilised_down"


def test_no_managed_worker_is_reported_not_decided(client, caplog) -> None:
    sc = Scaler(client, ScriptedReader([signal_at(0, 9.0, workers=())] * 3), RecordingActuator(), CFG)
    with caplog.at_level("WARNING", logger="scaler.daemon"):
        assert [sc.tick() for _ in range(3)] == [None, None, None]
    assert caplog.text.count("no live worker consumes inferpool.work") == 1  # once, not every tick
    assert client.hget(keys.SCALER_STATE, "reason") == b"no_workers"


def test_survives_a_redis_restart(fresh_redis, client) -> None:
    reader = SignalReader(client, keys.QUEUE_WORK, "work")
    client.zadd(keys.WORKERS, {"work@box": time.time()})
    client.hset(keys.worker("work@box"), mapping={"processes": 1, "busy": 0, "queues": keys.QUEUE_WORK})
    sc = Scaler(client, reader, RecordingActuator(), CFG, tick_s=0.2)
    assert sc.tick() is not None
    fresh_redis.stop(kill=True)
    assert sc.tick() is None and sc.tick() is None
    assert sc.metrics.errors == {"observe": 2}
    fresh_redis.start()
    client.zadd(keys.WORKERS, {"work@box": time.time()})
    client.hset(keys.worker("work@box"), mapping={"processes": 1, "busy": 0, "queues": keys.QUEUE_WORK})
    assert sc.tick() is not None
    assert client.exists(keys.SCALER_HEALTH)


def test_run_stops_on_request_and_closes_the_actuator(client) -> None:
    act = RecordingActuator()
    sc = Scaler(client, ScriptedReader([signal_at(t, 1.0) for t in range(1000)]), act, CFG, tick_s=0.01)
    sc.run(once=True)
    assert act.closed
    sc.stop_event.set()
    sc.run()  # returns at once
    assert client.exists(keys.SCALER_HEALTH)


def tut(latency: float | None, procs: int) -> Observation:
    return Observation(0.0, 0.0, None, 0, None, None, procs, latency_p50_s=latency)


def test_tutorial_policy_steps_one_at_a_time_on_median_latency() -> None:
    cfg = PolicyConfig(wait_target_s=0.1, min_procs=1, max_procs=5)
    s = PolicyState()
    assert (decide_tutorial(tut(0.15, 2), s, cfg).target, decide_tutorial(tut(0.15, 2), s, cfg).reason) == (
        3, Reason.LATENCY_HIGH,
    )  # fmt: skip
    assert decide_tutorial(tut(0.04, 3), s, cfg).target == 2
    assert decide_tutorial(tut(0.07, 3), s, cfg).direction is Direction.HOLD
    assert decide_tutorial(tut(None, 3), s, cfg).direction is Direction.HOLD
    assert decide_tutorial(tut(0.5, 5), s, cfg).reason is Reason.AT_MAX
    assert decide_tutorial(tut(0.01, 1), s, cfg).reason is Reason.AT_MIN
    assert decide_tutorial(tut(0.01, 9), s, cfg).target == 5


def test_command_line_overrides_settings() -> None:
    ns = argparse.Namespace(dry_run=True, min=2, max=6, target_wait=0.25, actuator="process", policy=None, once=True)
    s = settings_from_args(ns, get_settings())
    cfg = policy_config(s)
    assert (cfg.min_procs, cfg.max_procs, cfg.wait_target_s) == (2, 6, 0.25)
    assert (s.scaler_dry_run, s.scaler_actuator, s.scaler_policy) == (True, "process", get_settings().scaler_policy)
