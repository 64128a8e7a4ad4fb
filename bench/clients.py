"""Load clients for the benchmarks: wrk for peak throughput, a lean asyncio client for timed workloads.

Both systems are measured with the same clients in the same run; the clients are chosen to cost
little CPU, since they share the machine's 2 cores with the system under test.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from inferpool.loadtest.http import TRANSPORT_ERRORS, HttpClient

LUA = Path(__file__).with_name("predict.lua")
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class WrkPoint:
    connections: int
    rps: float
    p50_s: float
    p99_s: float
    errors: int


def _dur(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def wrk(url: str, connections: int, seconds: int) -> WrkPoint:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", str(LUA), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _dur(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _dur(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    return WrkPoint(connections, rps, p50, p99, errors)


def peak(url: str, connections: tuple[int, ...], seconds: int, p99_max_s: float) -> tuple[WrkPoint | None, list]:
    """The highest throughput whose p99 stays within bound and has no errors."""
    points = [wrk(url, c, seconds) for c in connections]
    ok = [p for p in points if p.p99_s <= p99_max_s and p.errors == 0]
    return (max(ok, key=lambda p: p.rps) if ok else None), points


def _row(rng: np.random.Generator) -> list[float]:
    return rng.normal(size=20).round(6).tolist()


async def _timed_post(client: HttpClient, body: dict, out: list, work: int) -> None:
    t = time.perf_counter()
    try:
        status, _ = await client.post("/predict", body)
    except TRANSPORT_ERRORS:  # refused, reset, unreadable, or over the deadline (TimeoutError is an OSError)
        status = 0
    out.append((work, time.perf_counter() - t, status))


async def _bursts(url: str, seconds: int, size: int, mix: list[tuple[int, float]], seed: int) -> list:
    rng = np.random.default_rng(seed)
    works, probs = zip(*mix, strict=True)
    out: list = []
    client = HttpClient(url, timeout_s=60)
    try:
        tasks = []
        start = time.perf_counter()
        for i in range(seconds):
            # Bursts leave on the clock, not after the previous one finished: a slow server gets the same load.
            await asyncio.sleep(max(0.0, start + i - time.perf_counter()))
            for w in rng.choice(works, size=size, p=probs):
                body = {"X": _row(rng), "work": int(w)}
                tasks.append(asyncio.create_task(_timed_post(client, body, out, int(w))))
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    return out


def bursts(url: str, seconds: int, size: int, mix: list[tuple[int, float]], seed: int = 1) -> list:
    """Every second, ``size`` concurrent requests with work drawn from ``mix``: [(work, latency_s, status)]."""
    return asyncio.run(_bursts(url, seconds, size, mix, seed))


async def _steady(url: str, rate: float, seconds: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out: list = []
    client = HttpClient(url, timeout_s=60)
    try:
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_timed_post(client, {"X": _row(rng), "work": 0}, out, 0)))
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    return out


def steady(url: str, rate: float, seconds: int, seed: int = 2) -> list:
    """Evenly spaced light requests at ``rate`` per second (open loop)."""
    return asyncio.run(_steady(url, rate, seconds, seed))


def bulk_job(url: str, X: np.ndarray, as_json: bool = False) -> tuple[float, list[int]]:
    """Submit a job, poll until done, fetch the predictions. Returns (seconds, predictions)."""
    with httpx.Client(base_url=url, timeout=120) as c:
        t = time.perf_counter()
        if as_json:
            r = c.post("/v1/jobs", json={"instances": X.tolist()})
        else:
            buf = io.BytesIO()
            np.save(buf, X.astype(np.float32))
            r = c.post("/v1/jobs", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        r.raise_for_status()
        status_url = r.json()["status_url"]
        while True:
            view = c.get(status_url).json()
            if view["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - t
        if view["status"] != "succeeded":
            raise RuntimeError(f"job failed: {view.get('error')}")
        return elapsed, view["predictions"]
