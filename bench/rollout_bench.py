"""What a rollout costs the API per request: a routing decision, the per-version figures of an answer, and a
micro-batch taken from a queue of mixed versions. In-process, no Redis: the plan is the cached one.

    python -m bench.rollout_bench

Prints one table with the machine's speed (a 10M-iteration Python loop) beside the figures.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from api.batcher import Batcher, Entry
from api.dispatch import Reply
from api.rollout import Rollout
from bench.speed import loop_speed_s
from inferpool.rollout import Mode, Plan, choose
from inferpool.settings import Settings

N = 200_000


def _plan() -> Plan:
    return Plan(
        id="bench", mode=Mode.canary, stable="v1", candidate="v2", steps=(5.0, 25.0, 50.0, 100.0), step_s=60,
        min_requests=100, started_at=0, started_by="bench", step=2,
    )  # fmt: skip


def _per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


async def _measure() -> dict[str, float]:
    plan = _plan()
    keys = [f"caller-{i}" for i in range(1000)]
    out = {"routing decision (hash of the key)": _per_call_us(lambda i: choose(plan, keys[i % 1000], "v1"), N)}
    ro = Rollout(None, Settings(rollout_plan_cache_s=3600), "bench")
    ro._plan, ro._read_at = None, time.monotonic()  # no plan: what every request pays today
    out["route() with no plan"] = await _aper_call_us(lambda i: ro.route(keys[i % 1000], "v1"), N // 4)
    ro._plan = plan
    out["route() with a canary plan (cached)"] = await _aper_call_us(lambda i: ro.route(keys[i % 1000], "v1"), N // 4)
    reply = Reply("t", np.zeros(64, dtype=np.int64), "v1", 0.0, 1.0, 1.002)
    ro._plan = None  # figures to Prometheus only (with a plan, one pipelined Redis write per batch is added)
    out["observe() per 64-row batch, no plan"] = _per_call_us(lambda i: ro.observe("v1", 64, reply, False), N // 10)
    batcher = Batcher(None, max_rows=256, max_wait_s=0.005, budget_s=0.06, max_in_flight=2, reply_timeout_s=10)
    loop = asyncio.get_running_loop()
    row = np.zeros((1, 20), dtype=np.float64)

    def take(i: int) -> None:
        for k in range(64):
            batcher._pending.append(Entry(row, 0.0, loop.create_future(), version="v1" if k % 2 else "v2"))
        while batcher._pending:
            batcher._take(256)

    per_64 = _per_call_us(take, 2000)
    out["batch taking per request, 2 versions interleaved"] = per_64 / 64
    return out


async def _aper_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    speed = loop_speed_s()
    figures = asyncio.run(_measure())
    print(f"machine: 10M-iteration Python loop {speed:.2f} s")
    print(f"{'per request':<52}{'us':>8}")
    for name, us in figures.items():
        print(f"{name:<52}{us:>8.2f}")


if __name__ == "__main__":
    main()
