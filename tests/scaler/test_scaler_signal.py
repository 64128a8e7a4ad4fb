"""The scaler's signal: the arrival-rate estimator on recorded counts, and the reader on a real Redis."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
import redis

from inferpool import keys
from scaler.load_signal import ArrivalRate, SignalReader, TaskSamples

QUEUE = "inferpool.work"


def counts(rates: list[float], seed: int) -> list[int]:
    """Cumulative Poisson arrivals, one read per second at the given rates."""
    rng = np.random.default_rng(seed)
    return np.cumsum([rng.poisson(r) for r in rates]).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_steady_poisson_load_is_measured_within_the_policys_noise_band(seed: int) -> None:
    rate = ArrivalRate()
    seen = []
    for t, c in enumerate(counts([12.0] * 300, seed)):
        rate.add(float(t), c)
        seen.append(rate.rate())
    assert rate.changes == 0
    steady = np.array(seen[20:])  # once the 15 s window is full
    assert np.all(np.abs(steady / 12.0 - 1.0) < 0.3)
    assert abs(steady.mean() / 12.0 - 1.0) < 0.08


@pytest.mark.parametrize("seed", range(5))
def test_a_step_up_is_measured_from_post_step_arrivals_within_two_reads(seed: int) -> None:
    rate = ArrivalRate()
    for t, c in enumerate(counts([12.0] * 60 + [36.0] * 30 + [12.0] * 17, seed)):
        rate.add(float(t), c)
        if t == 61:  # two reads after the step
            assert rate.changes == 1
            assert rate.rate() > 36.0 * 0.7
        if t == 89:
            assert rate.rate() == pytest.approx(36.0, rel=0.25)
    # a fall needs no haste (scale-down waits a whole window anyway): the steady window follows it
    assert rate.rate() == pytest.approx(12.0, rel=0.25)


def test_a_count_that_falls_restarts_the_estimate() -> None:
    rate = ArrivalRate()
    for t in range(10):
        rate.add(float(t), 10_000 + 10 * t)
    rate.add(10.0, 3)  # Redis restarted: counters begin again
    assert rate.rate() is None
    rate.add(11.0, 13)
    assert rate.rate() == pytest.approx(10.0)


def test_task_samples_quantile_and_mean_over_windows() -> None:
    s = TaskSamples(keep_s=30)
    for i in range(100):
        s.add(1000.0 + i * 0.1, wait_s=i / 100, run_s=0.2)
    s.add(950.0, wait_s=9.0, run_s=9.0)
    s.trim(1010.0)
    assert s.wait_quantile(1010.0, window_s=10.0) == pytest.approx(np.percentile(np.arange(100) / 100, 95))
    assert s.mean_run(1010.0) == pytest.approx(0.2)
    assert s.wait_quantile(2000.0) is None


def _message(enqueued: float) -> bytes:
    return orjson.dumps({"body": "", "headers": {keys.ENQUEUED_HEADER: enqueued}, "properties": {}})


def _beat(client: redis.Redis, name: str, queues: str, processes: int, busy: int) -> None:
    now = time.time()
    client.zadd(keys.WORKERS, {name: now})
    client.hset(keys.worker(name), mapping={"processes": processes, "busy": busy, "queues": queues,
                                            "pid": 7, "host": "box", "updated": now})  # fmt: skip


class Clock:
    t = 50.0

    def __call__(self) -> float:
        return self.t


def test_reader_on_real_redis(fresh_redis) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    now = time.time()
    for age in (0.8, 0.3):  # LPUSH order: the oldest sits at index -1
        client.lpush(QUEUE, _message(now - age))
    client.lpush(keys.QUEUE_ONLINE, _message(now - 5.0))  # another queue: not ours
    # kombu's unacked entries: [message, exchange, routing_key]
    client.hset(keys.UNACKED_HASH, "t1", orjson.dumps([_message(now).decode(), QUEUE, QUEUE]))
    client.hset(keys.UNACKED_HASH, "t2", orjson.dumps([_message(now).decode(), QUEUE, QUEUE]))
    client.hset(keys.UNACKED_HASH, "t3", orjson.dumps([_message(now).decode(), "", keys.QUEUE_ONLINE]))
    for w in (0.01, 0.02, 0.5):  # history from before the scaler started
        client.xadd(keys.task_samples(QUEUE), {"w": w, "r": 0.1})
    _beat(client, "work@box", QUEUE, 3, 2)
    _beat(client, "work-s1@box", QUEUE, 1, 0)
    _beat(client, "online@box", f"{keys.QUEUE_ONLINE},{keys.QUEUE_BULK}", 2, 0)
    _beat(client, "all@box", ",".join(keys.ALL_QUEUES), 2, 0)  # consumes the queue, but not ours by name

    clock = Clock()
    reader = SignalReader(client, QUEUE, "work", clock=clock)
    first = reader.read()
    assert (first.waiting, first.held, first.depth) == (2, 2, 4)
    assert first.oldest_wait_s == pytest.approx(0.8, abs=0.2)
    assert [w.name for w in first.workers] == ["work-s1@box", "work@box"]
    assert (first.processes, sum(w.busy for w in first.workers)) == (4, 2)
    assert first.completed == 0 and first.latency_p50_s is None  # history is not "this tick"
    assert first.service_time_s == pytest.approx(0.1)
    assert first.wait_p95_s == pytest.approx(np.percentile([0.01, 0.02, 0.5], 95))
    assert first.arrival_rate_per_s is None  # one read: no rate yet

    # one second later: 6 tasks finished (one message left the queue), 3 new arrived
    for _ in range(6):
        client.xadd(keys.task_samples(QUEUE), {"w": 0.03, "r": 0.2})
    client.rpop(QUEUE)
    for _ in range(3):
        client.lpush(QUEUE, _message(time.time()))
    clock.t += 1.0
    second = reader.read()
    assert second.completed == 6
    assert second.latency_p50_s == pytest.approx(0.23)
    # arrivals = completions + change in (waiting + held) = 6 + (4 + 2) - (2 + 2) = 8 in 1 s
    assert second.arrival_rate_per_s == pytest.approx(8.0)
    obs = second.observation(current_procs=4)
    assert (obs.depth, obs.current_procs, obs.arrival_rate_per_s) == (6, 4, second.arrival_rate_per_s)
