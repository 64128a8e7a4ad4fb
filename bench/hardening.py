"""Issue 12's API-edge figures, measured on `inferpool up` (keys on): strangers, big bodies, memory.

1. **A stranger cannot stall the API.** Senders POST 100 MB bodies with a wrong ``X-API-Key`` to
   ``/v1/jobs`` (the route with the megabyte limit) and ``/v1/predict``, one after another on fresh
   connections, reading while they send, as curl does; meanwhile a probe GETs ``/healthz`` every 10 ms.
   Reported: the probe's p50/p99/max (target p99 <= 20 ms), and how long each refusal took from connect
   to the status line (target <= 100 ms), and how much of each body got sent before the API hung up.
2. **No body multiplies memory.** One request at a time, accepted and refused bodies of every content type
   (JSON, CSV, .npy float64 and int8, multipart CSV); the API's peak RSS (VmHWM, reset before each request
   through /proc/<pid>/clear_refs) less its RSS before, as a multiple of the body (target <= 3x), and
   the probe's p99 while the body is parsed (the event loop is never held long).

    python -m bench.hardening [--seconds 10] [--senders 3] [--mb 100] [--out results/hardening.json]

Not part of the test suite (it sends gigabytes); the tests check the same properties without timing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import select
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.harness import inferpool_system
from bench.speed import loop_speed_s
from inferpool import model_store

MB = 1024 * 1024
N_FEATURES = 20
KEY = "bench-hardening-0f3c9b27"
WRONG_KEY = "not-the-key-00000000"
SEND_BYTES = 256 * 1024


def json_body(size: int) -> memoryview:
    """A valid job/predict JSON body of about ``size`` bytes: what a stranger would send to be parsed."""
    row = b"[" + b",".join([b"0.123456789"] * N_FEATURES) + b"]"
    body = b'{"instances": [' + b",".join([row] * (size // (len(row) + 1))) + b"]}"
    return memoryview(body)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the probe ---------------------------------------------------------------------------------------
def _probe(url: str, every_s: float, stop: Event, out: Connection) -> None:
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("/healthz").raise_for_status()
            latencies.append(time.perf_counter() - t0)
            stop.wait(max(0.0, every_s - (time.perf_counter() - t0)))
    out.send(latencies)


@dataclass
class Probe:
    """GET /healthz every ``every_s`` on one keep-alive connection, from a process of its own (a thread
    would share this process's GIL with the senders and measure them, not the API)."""

    url: str
    every_s: float = 0.01
    latencies: list[float] = field(default_factory=list)

    def __enter__(self) -> Probe:
        self._stop = multiprocessing.Event()
        self._recv, send = multiprocessing.Pipe(duplex=False)
        self._proc = multiprocessing.Process(target=_probe, args=(self.url, self.every_s, self._stop, send))
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies = self._recv.recv()
        self._proc.join()

    def summary(self) -> dict:
        ms = [v * 1000 for v in self.latencies]
        return {"n": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "max_ms": max(ms, default=0)}


# --- 1. strangers with big bodies ---------------------------------------------------------------------
def refused_once(host: str, port: int, path: str, body: memoryview) -> tuple[float, int, int]:
    """(seconds to the status line, body bytes sent, status) for one wrong-key POST of ``body``.

    Sends as curl does without ``Expect: 100-continue``: the body as fast as the socket takes it, looking
    for an answer between sends, and still reading it when the API has hung up on the rest.
    """
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-api-key: {WRONG_KEY}\r\n\r\n"
    )
    sock.sendall(head.encode())
    sent = 0
    try:
        while sent < len(body):
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                sent += sock.send(body[sent : sent + SEND_BYTES])
    except OSError:  # reset or broken pipe: the answer may already be here
        pass
    answer = b""
    with contextlib.suppress(OSError):
        sock.settimeout(5)
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    took = time.perf_counter() - t0
    sock.close()
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
    return took, sent, status


def strangers(url: str, seconds: float, senders: int, size: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    results: list[tuple[float, int, int]] = []
    body = json_body(size)
    deadline = time.monotonic() + seconds

    def sender(path: str) -> None:
        while time.monotonic() < deadline:
            results.append(refused_once(host, int(port), path, body))

    paths = ["/v1/jobs", "/v1/predict"]
    threads = [threading.Thread(target=sender, args=(paths[i % len(paths)],)) for i in range(senders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = [r[0] * 1000 for r in results]
    return {
        "requests": len(results),
        "statuses": sorted({r[2] for r in results}),
        "refusal_p50_ms": pct(took, 0.5),
        "refusal_p99_ms": pct(took, 0.99),
        "refusal_max_ms": max(took, default=0),
        "body_sent_mean_mb": statistics.fmean(r[1] for r in results) / MB if results else 0,
        "declared_mb": round(len(body) / MB, 1),
    }


# --- 2. memory per body ---------------------------------------------------------------------------------
def rows_text(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(n, N_FEATURES))


def bodies(rng: np.random.Generator, mb: int) -> list[tuple[str, dict, int]]:
    """(name, request kwargs, expected status) of bodies around ``mb`` MiB each."""
    n = mb * MB // 380  # ~380 bytes per row of 20 floats as JSON or CSV
    X = rows_text(n, rng)
    as_json = json.dumps({"instances": X.tolist()}).encode()
    as_csv = "\n".join(",".join(repr(v) for v in r) for r in X.tolist()).encode()
    npy64, npy8 = io.BytesIO(), io.BytesIO()
    np.save(npy64, rng.normal(size=(mb * MB // 160, N_FEATURES)))
    np.save(npy8, rng.integers(-100, 100, size=(min(1_000_000, mb * MB // 20), N_FEATURES), dtype=np.int8))
    bad_json = as_json[:-3] + b",NaN]]}"  # the last value breaks a rule: everything is read first
    one_column = b"0.5\n" * (mb * MB // 4)  # the CSV: refused on its first line now
    json_t, csv_t, npy_t = (
        {"content-type": "application/json"},
        {"content-type": "text/csv"},
        {"content-type": "application/x-npy"},
    )
    return [
        ("json accepted", {"content": as_json, "headers": json_t}, 202),
        ("json refused at the last value", {"content": bad_json, "headers": json_t}, 422),
        ("csv accepted", {"content": as_csv, "headers": csv_t}, 202),
        ("csv one column (issue)", {"content": one_column, "headers": csv_t}, 422),
        ("npy float64 accepted", {"content": npy64.getvalue(), "headers": npy_t}, 202),
        ("npy int8 accepted", {"content": npy8.getvalue(), "headers": npy_t}, 202),
        ("multipart csv accepted", {"files": {"file": ("x.csv", as_csv, "text/csv")}}, 202),
    ]


def api_process(up_pid: int) -> psutil.Process:
    for p in psutil.Process(up_pid).children(recursive=True):
        if " api" in " ".join(p.cmdline()):
            return p
    raise RuntimeError("no API process under inferpool up")


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def memory(url: str, api: psutil.Process, mb: int, rng: np.random.Generator) -> list[dict]:
    out = []
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=url, timeout=300, headers=headers) as c:
        for name, kwargs, expected in bodies(rng, mb):
            size = len(kwargs["content"]) if "content" in kwargs else len(kwargs["files"]["file"][1])
            time.sleep(1.0)  # let the workers finish the previous job: they share the 2 cores
            Path(f"/proc/{api.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = _status_kb(api.pid, "VmRSS")
            with Probe(url) as probe:
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", **kwargs)
                took = time.perf_counter() - t0
            peak = _status_kb(api.pid, "VmHWM")
            growth = (peak - before) * 1024
            out.append(
                {
                    "body": name, "mb": round(size / MB, 1), "status": r.status_code, "expected": expected,
                    "seconds": round(took, 2), "rss_growth_mb": round(growth / MB, 1),
                    "growth_x_body": round(growth / size, 2), "healthz_during": probe.summary(),
                }
            )  # fmt: skip
            print(f"  {out[-1]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="of wrong-key senders")
    p.add_argument("--senders", type=int, default=3)
    p.add_argument("--mb", type=int, default=100, help="declared size of each stranger's body")
    p.add_argument("--body-mb", type=int, default=40, help="size of the memory test's bodies")
    p.add_argument("--out", default=f"results/hardening-{time.strftime('%Y%m%d-%H%M%S')}.json")
    ns = p.parse_args(argv)
    speed = loop_speed_s()
    print(f"machine: 10M-iteration Python loop {speed:.2f} s")
    rng = np.random.default_rng(12)
    res: dict = {"loop_10m_s": round(speed, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        model_dir = var / "models"
        model_store.ensure_reference(model_dir)
        with inferpool_system(var / "stack", model_dir, INFERPOOL_API_KEYS=f"bench:{KEY}") as system:
            api = api_process(system.pid)
            with Probe(system.url) as idle:
                time.sleep(3)
            res["healthz_idle"] = idle.summary()
            print(f"healthz, idle: {res['healthz_idle']}")
            with Probe(system.url) as probe:
                res["strangers"] = strangers(system.url, ns.seconds, ns.senders, ns.mb * MB)
            res["healthz_under_strangers"] = probe.summary()
            print(f"strangers: {res['strangers']}\nhealthz meanwhile: {res['healthz_under_strangers']}")
            print("memory per body:")
            res["memory"] = memory(system.url, api, ns.body_mb, rng)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
