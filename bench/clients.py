"""Load clients for the benchmarks: wrk for peak throughput, a lean open-loop asyncio client for timed workloads.

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
import orjson

from loadtest.http import JSON, TRANSPORT_ERRORS, HttpClient

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
    """The highest throughput whose p99 stays within bound and has no errors, over rising connections.

    Stops rising after the first point over the bound: more connections only queue longer.
    """
    points = []
    for c in connections:
        points.append(wrk(url, c, seconds))
        if points[-1].p99_s > p99_max_s:
            break
    ok = [p for p in points if p.p99_s <= p99_max_s and p.errors == 0]
    return (max(ok, key=lambda p: p.rps) if ok else None), points


# --- open loop: requests leave on a schedule, whatever the server does ----------------------------------------

# Outcome of a scheduled request besides its HTTP status.
FAILED = 0  # refused, reset, unreadable answer
TIMEOUT = -1  # no answer by the scheduled time + timeout
DROPPED = -2  # never sent: the cap on requests in flight was reached


@dataclass(frozen=True)
class Schedule:
    """Send times (s from the start), the work of each request, and the request bodies, built beforehand."""

    times: np.ndarray
    works: np.ndarray
    bodies: list[bytes]


def poisson_times(phases: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals through consecutive ``(rate, seconds)`` phases."""
    out, t0 = [], 0.0
    for rate, seconds in phases:
        n = rng.poisson(rate * seconds)  # given n, arrivals of a Poisson process are uniform over the phase
        out.append(t0 + np.sort(rng.uniform(0.0, seconds, n)))
        t0 += seconds
    return np.concatenate(out)


def even_times(rate: float, seconds: float) -> np.ndarray:
    return (np.arange(int(rate * seconds)) + 0.5) / rate


def schedule(times: np.ndarray, mix: list[tuple[int, float]], rng: np.random.Generator) -> Schedule:
    """One-row ``POST /predict`` bodies ``{"X": [20 floats], "work": ms}`` with work drawn from ``mix``."""
    works, probs = zip(*mix, strict=True)
    w = rng.choice(np.array(works), size=len(times), p=np.array(probs) / sum(probs))
    X = rng.normal(size=(len(times), 20)).round(6)
    bodies = [orjson.dumps({"X": row, "work": int(k)}) for row, k in zip(X.tolist(), w, strict=True)]
    return Schedule(times, w, bodies)


@dataclass
class OpenLoopResult:
    """Per scheduled request: its send time (s from the start), work, latency from the send time, outcome."""

    times: np.ndarray
    works: np.ndarray
    latency_s: np.ndarray  # nan for dropped requests
    status: np.ndarray  # HTTP status, or FAILED / TIMEOUT / DROPPED


async def _open_loop(url: str, sch: Schedule, t0: float, timeout_s: float, max_in_flight: int) -> OpenLoopResult:
    loop = asyncio.get_running_loop()  # its clock is time.monotonic(), so t0 is on it
    n = len(sch.times)
    latency, status = np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    client = HttpClient(url, timeout_s=None)
    requests = [client.prepare("POST", "/predict", b, content_type=JSON) for b in sch.bodies]
    pending: set[asyncio.Task] = set()

    async def one(i: int, due: float) -> None:
        try:
            status[i] = (await client.send(requests[i], due + timeout_s)).status
        except TimeoutError:
            status[i] = TIMEOUT
        except TRANSPORT_ERRORS:
            status[i] = FAILED
        latency[i] = loop.time() - due

    try:
        for i, t in enumerate(sch.times.tolist()):
            due = t0 + t
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= max_in_flight:
                status[i] = DROPPED
                continue
            task = loop.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        while pending:
            await asyncio.wait(list(pending))
    finally:
        await client.close()
    return OpenLoopResult(sch.times, sch.works, latency, status)


def open_loop(
    url: str, sch: Schedule, t0: float | None = None, timeout_s: float = 10.0, max_in_flight: int = 256
) -> OpenLoopResult:
    """Send ``sch`` on its clock from monotonic time ``t0`` (default: now), one asyncio task per request.

    Latency runs from the scheduled send time, so a client or server falling behind shows in it.
    """
    start = time.monotonic() + 0.05 if t0 is None else t0
    return asyncio.run(_open_loop(url, sch, start, timeout_s, max_in_flight))


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
