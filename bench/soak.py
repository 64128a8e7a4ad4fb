"""`make soak`: minutes of steady mixed load on `inferpool up`, then drain and account for everything.

Open loop at ``--rate`` requests/s, a fixed cycle of kinds: single rows on ``/predict``, small batches
and requests with simulated work on ``/v1/predict``, jobs of 1,000 to 10,000 rows (.npy) on ``/v1/jobs``.
After the load stops, every accepted job is polled to its end and every answer is checked against
the model (rows rebuilt from their seeds, predicted in one batch).

Reports requests served (by route and status), p50/p99 per route, jobs accepted and lost (accepted but
never succeeded, or answered wrong), the ledger (accepted, succeeded, failed, duplicates), and the
resident memory of every process of the stack after warm-up and at the end. Writes
results/soak-<time>.json. Not part of the test suite: it takes minutes.

With ``--chaos-every-s N`` (``make chaos-soak``) the soak runs its own redis-server (AOF on) and every N
seconds injects a fault, in turn: Redis restarted (SIGTERM, AOF replayed), a worker pool process
SIGKILLed mid-task. The same accounting then says what the faults cost: lost, duplicates, re-dispatched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import random
import shutil
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.harness import inferpool_stack
from cli.local_redis import LocalRedis
from inferpool import model_store

N_FEATURES = 20
MB = 1024 * 1024
MAX_IN_FLIGHT = 256
DRAIN_TIMEOUT_S = 180.0
# One cycle of 20 request slots: (kind, rows, work_ms). ~60% light single rows, as in the tutorial mix.
CYCLE = (
    [("predict", 1, 0)] * 12
    + [("v1_predict", 1, 50)] * 3
    + [("v1_predict", 8, 0)] * 2
    + [("job", 1000, 0), ("job", 2000, 20), ("job", 10000, 0)]
)


@dataclass
class Record:
    kind: str
    seed: int
    rows: int
    status: int
    latency_s: float
    job_id: str | None = None
    answer: list[int] | None = None


def rows_of(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


async def _one(c: httpx.AsyncClient, i: int, out: list[Record]) -> None:
    kind, n, work_ms = CYCLE[i % len(CYCLE)]
    X = rows_of(i, n)
    t = time.perf_counter()
    try:
        if kind == "predict":
            r = await c.post("/predict", json={"X": X[0].tolist(), "work": work_ms})
        elif kind == "v1_predict":
            r = await c.post("/v1/predict", json={"instances": X.tolist(), "work_ms": work_ms})
        else:  # jobs travel as .npy: cheap to encode here and to parse there, so latency is the system's
            buf = io.BytesIO()
            np.save(buf, X)
            r = await c.post(f"/v1/jobs?work_ms={work_ms}", content=buf.getvalue(),
                             headers={"content-type": "application/x-npy"})  # fmt: skip
    except httpx.HTTPError:
        out.append(Record(kind, i, n, 0, time.perf_counter() - t))
        return
    rec = Record(kind, i, n, r.status_code, time.perf_counter() - t)
    if r.status_code in (200, 202, 504):
        body = r.json()
        rec.job_id = body.get("job_id")
        rec.answer = [body["prediction"]] if "prediction" in body else body.get("predictions")
    out.append(rec)


async def steady_load(url: str, rate: float, seconds: float, out: list[Record]) -> int:
    """Open loop: request i leaves at i/rate s whatever happened to the others. Returns requests skipped
    because MAX_IN_FLIGHT were outstanding (the client's own bound, reported rather than hidden)."""
    skipped = 0
    in_flight: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        start = time.perf_counter()
        i = 0
        while (due := start + i / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if len(in_flight) >= MAX_IN_FLIGHT:
                skipped += 1
            else:
                task = asyncio.create_task(_one(c, i, out))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            i += 1
        await asyncio.gather(*in_flight)
    return skipped


# --- memory of every process of the stack -------------------------------------------------------


def _is_worker(cmd: list[str]) -> bool:
    return "celery" in cmd and "worker" in cmd


def _node(cmd: list[str]) -> str:
    return cmd[cmd.index("-n") + 1] if "-n" in cmd else "worker"


def _label(cmd: list[str], parent_cmd: list[str]) -> str:
    if cmd and "redis-server" in cmd[0]:  # redis-server rewrites its title: "path host:port"
        return "redis"
    if _is_worker(cmd):  # a pool process is a fork of its worker: same command line as its parent
        return f"{_node(cmd)} pool process" if _is_worker(parent_cmd) else f"{_node(cmd)} main"
    for name in ("api", "scaler", "flower", "up"):
        if name in cmd:
            return name
    return " ".join(cmd[:4])


def memory(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """pid -> (label, RSS in MB) for every process under ``root``."""
    out = {}
    for p in root.children(recursive=True):
        try:
            out[p.pid] = (_label(p.cmdline(), p.parent().cmdline()), p.memory_info().rss / MB)
        except psutil.Error:
            continue
    return out


async def sample_memory(every_s: float, samples: list[tuple[float, dict]], stop: asyncio.Event) -> None:
    root = psutil.Process()
    while not stop.is_set():
        samples.append((time.time(), memory(root)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def memory_growth(after_warmup: dict, end: dict) -> list[dict]:
    """Per process alive at both samples, and per label summed (pool processes come and go)."""
    rows = []
    for pid, (label, start_mb) in sorted(after_warmup.items(), key=lambda kv: kv[1][0]):
        if pid in end:
            end_mb = end[pid][1]
            growth = end_mb - start_mb
            rows.append({"process": label, "pid": pid, "start_mb": round(start_mb, 1), "end_mb": round(end_mb, 1),
                         "growth_mb": round(growth, 1), "growth_pct": round(100 * growth / start_mb, 1)})  # fmt: skip
    return rows


# --- faults --------------------------------------------------------------------------------------------


def kill_a_pool_process(rng: random.Random) -> bool:
    """SIGKILL one Celery pool process of the stack, preferring one that is running a task (busy CPU)."""
    pool = [p for p in psutil.Process().children(recursive=True) if _is_pool_process(p)]
    if not pool:
        return False
    busy = [p for p in pool if _cpu_busy(p)]
    victim = rng.choice(busy or pool)
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim.pid, signal.SIGKILL)
    return True


def _is_pool_process(p: psutil.Process) -> bool:
    try:
        return _is_worker(p.cmdline()) and _is_worker(p.parent().cmdline())
    except psutil.Error:
        return False


def _cpu_busy(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_RUNNING
    except psutil.Error:
        return False


async def inject_faults(redis: LocalRedis, every_s: float, stop: asyncio.Event, log: list[dict]) -> None:
    """Every ``every_s``: restart Redis (clean stop, AOF replayed) or kill a pool process, in turn."""
    rng = random.Random(7)
    kinds = itertools.cycle(("restart redis", "SIGKILL a pool process"))
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        kind = next(kinds)
        t = time.time()
        if kind == "restart redis":
            await asyncio.to_thread(redis.restart)
            done = True
        else:
            done = await asyncio.to_thread(kill_a_pool_process, rng)
        if done:
            log.append({"at": round(t, 1), "fault": kind, "took_s": round(time.time() - t, 2)})


# --- accounting ------------------------------------------------------------------------------------


async def drain(url: str, records: list[Record]) -> dict[str, dict]:
    """Poll every accepted job (and every 504's job id) until it ends; job_id -> final view."""
    pending = {r.job_id for r in records if r.status in (202, 504) and r.job_id}
    views: dict[str, dict] = {}
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                r = await c.get(f"/v1/jobs/{job_id}")
                if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed"):
                    views[job_id] = r.json()
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.5)
    return views


def check_answers(model, records: list[Record], views: dict[str, dict]) -> tuple[int, int]:
    """(lost, wrong): accepted work that never succeeded, and answers that differ from the model's."""
    lost = wrong = 0
    for r in records:
        if r.status not in (200, 202, 504):
            continue
        got = r.answer if r.status == 200 else (views.get(r.job_id) or {}).get("predictions")
        if r.status != 200 and (views.get(r.job_id) or {}).get("status") != "succeeded":
            lost += 1
            continue
        wrong += got != model.predict(rows_of(r.seed, r.rows)).tolist()
    return lost, wrong


def latency(records: list[Record]) -> dict[str, dict]:
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.status in (200, 202):
            by_kind[r.kind].append(r.latency_s)
    return {
        k: {"n": len(v), "p50_ms": round(1000 * float(np.percentile(v, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(v, 99)), 1)}
        for k, v in sorted(by_kind.items())
    }  # fmt: skip


async def soak(url: str, ns: argparse.Namespace, redis: LocalRedis | None) -> dict:
    records: list[Record] = []
    samples: list[tuple[float, dict]] = []
    faults: list[dict] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(ns.sample_s, samples, stop))
    chaos = asyncio.create_task(inject_faults(redis, ns.chaos_every_s, stop, faults)) if redis else None
    seconds = ns.minutes * 60
    t0 = time.time()
    skipped = await steady_load(url, ns.rate, seconds, records)
    stop.set()
    await sampler
    if chaos:
        await chaos
    views = await drain(url, records)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        status = (await c.get("/v1/monitoring/status")).json()
    warm = next((m for t, m in samples if t - t0 >= ns.warmup_s), samples[0][1])
    return {"records": records, "views": views, "skipped": skipped, "ledger": status.get("ledger", {}),
            "memory": memory_growth(warm, samples[-1][1]), "memory_samples": len(samples),
            "faults": faults}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    p.add_argument("--rate", type=float, default=30.0, help="requests per second, open loop (default 30)")
    p.add_argument("--warmup-s", type=float, default=30.0, help="memory is compared from this far in")
    p.add_argument("--sample-s", type=float, default=10.0, help="memory sampling period")
    p.add_argument("--chaos-every-s", type=float, default=0.0, help="inject a fault this often (0: none)")
    p.add_argument("--out", default="results")
    ns = p.parse_args()
    out = Path(ns.out)
    var = out / "soak-var"
    model_dir = var / "models"
    model_store.ensure_reference(model_dir)
    model, _ = model_store.load_model(model_dir)
    shutil.rmtree(var / "stack", ignore_errors=True)  # a fresh Redis: the ledger counts this run only
    chaos = f", a fault every {ns.chaos_every_s:g} s" if ns.chaos_every_s else ""
    print(f"soak: {ns.minutes:g} min at {ns.rate:g} req/s on inferpool up{chaos} ...", flush=True)
    # Under chaos the soak owns Redis, to restart it; otherwise `inferpool up` starts its private one.
    redis = LocalRedis(var / "stack" / "redis-chaos", aof=True).start() if ns.chaos_every_s else None
    env = {"REDIS_URL": redis.url} if redis else {}
    try:
        with inferpool_stack(var / "stack", model_dir, scaler=True, **env) as url:
            res = asyncio.run(soak(url, ns, redis))
    finally:
        if redis:
            redis.stop()
    records: list[Record] = res.pop("records")
    lost, wrong = check_answers(model, records, res.pop("views"))
    codes = Counter(f"{r.kind} {r.status}" for r in records)
    summary = {
        "minutes": ns.minutes, "rate_per_s": ns.rate, "requests": len(records), "client_skipped": res["skipped"],
        "served": sum(r.status in (200, 202) for r in records), "status": dict(sorted(codes.items())),
        "jobs_accepted": sum(r.kind == "job" and r.status == 202 for r in records),
        "faults": Counter(f["fault"] for f in res["faults"]), "fault_log": res["faults"],
        "lost": lost, "wrong": wrong, "duplicates": res["ledger"].get("duplicates", 0), "ledger": res["ledger"],
        "latency": latency(records), "memory": res["memory"], "memory_samples": res["memory_samples"],
    }  # fmt: skip
    print(report(summary))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({**summary, "settings": vars(ns)}, indent=2))
    print(f"results: {path}")


def report(s: dict) -> str:
    lines = [
        f"requests {s['requests']}  served {s['served']}  jobs accepted {s['jobs_accepted']}  "
        f"lost {s['lost']}  wrong {s['wrong']}  duplicates {s['duplicates']}  client-skipped {s['client_skipped']}",
        f"faults   {dict(s['faults']) or 'none'}",
        f"ledger   {s['ledger']}",
        "status   " + ", ".join(f"{k}: {v}" for k, v in s["status"].items()),
        "latency  " + ", ".join(f"{k} p50/p99 {v['p50_ms']}/{v['p99_ms']} ms" for k, v in s["latency"].items()),
        "memory (RSS after warm-up -> end):",
    ]  # fmt: skip
    for m in s["memory"]:
        lines.append(
            f"  {m['process']:<34} {m['start_mb']:>7.1f} -> {m['end_mb']:>7.1f} MB  ({m['growth_mb']:+.1f} MB)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
