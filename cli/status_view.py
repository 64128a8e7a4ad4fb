"""``inferpool status``: the system at a glance in a terminal, refreshed every second.

Reads the same JSON as ``GET /v1/monitoring/status`` (straight from Redis, or
from an API with ``--url``), the served model and its runtime, the drift verdict, and the workers' own
``/metrics`` (addresses from their heartbeats) for the p95 queue wait.
Throughput and error rate are differences of the job ledger between frames,
over the last ``WINDOW_S`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from inferpool import drift, keys, model_store, rollout_store, status
from inferpool.compiled import served_runtime
from inferpool.records import HeartbeatField, LedgerField
from inferpool.rollout import Plan, describe
from inferpool.settings import Settings, get_settings
from loadtest.client_auth import ApiKeyError, add_api_key_arguments, api_key_from

WINDOW_S = 10.0
DRIFT_EVERY_S = 5.0
WAIT_HISTOGRAM = "inferpool_task_queue_wait_seconds_bucket"
CLEAR = "\x1b[H\x1b[2J"


def quantile_from_buckets(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` over cumulative bucket counts ``{le: count}``; None without observations."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    prev_le, prev_n = 0.0, 0.0
    for le in edges:
        n = buckets[le]
        if n >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound is all we know
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 0.0)
        prev_le, prev_n = le, n
    return prev_le


def wait_buckets(text: str) -> dict[float, float]:
    """Queue-wait bucket counts of one worker's exposition, summed over queues."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == WAIT_HISTOGRAM:
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def _raise_for_problem(r: httpx.Response) -> None:
    """An error answer raises with the API's own words: its problem ``detail`` (RFC 9457), else the reason."""
    if not r.is_error:
        return
    try:
        detail = r.json().get("detail")
    except ValueError:  # not JSON: a proxy's page, say
        detail = None
    message = f"{r.status_code} from {r.request.url.path}: {detail or r.reason_phrase}"
    raise httpx.HTTPStatusError(message, request=r.request, response=r)


@dataclass
class Frame:
    at: float
    status: dict[str, Any]
    buckets: dict[float, float]


@dataclass
class Viewer:
    settings: Settings
    url: str | None = None
    api_key: str | None = None
    frames: deque[Frame] = field(default_factory=lambda: deque(maxlen=64))
    drift_line: str = "drift: (reading)"
    model_line: str = "model: (reading)"
    _drift_at: float = 0.0

    async def _status(self, aclient: Any, http: httpx.AsyncClient) -> dict[str, Any]:
        if self.url:
            r = await http.get(f"{self.url}/v1/monitoring/status")
            _raise_for_problem(r)
            return r.json()
        return await status.collect(aclient)

    async def _drift(self, aclient: Any, http: httpx.AsyncClient) -> str:
        if self.url:
            r = await http.get(f"{self.url}/v1/monitoring/drift")
            _raise_for_problem(r)
            d = r.json()
        else:
            X, classes = await drift.aread_window(aclient)
            m = model_store.read_manifest(self.settings.model_dir)
            s = self.settings
            d = drift.evaluate(m, X, classes, moderate=s.drift_psi_moderate, major=s.drift_psi_major).to_json()
        bad = [f"f{f['index']}:{f['verdict']}" for f in d["features"] if f["verdict"] in ("moderate", "major")]
        detail = f" ({', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''})" if bad else ""
        n = f"{d['n_features_drifted']}/{d['n_features']} features drifted"
        return f"drift: {d['status']} (window {d['n_samples']} rows, {n}){detail}"

    async def _model(self, http: httpx.AsyncClient, aclient: Any) -> str:
        if self.url:
            r = await http.get(f"{self.url}/v1/models")
            _raise_for_problem(r)
            m = r.json()
            runtime = (m.get("runtime") or {}).get("runtime", "joblib")
            plan = (
                Plan.from_json({k: v for k, v in m["rollout"].items() if k not in ("shares", "shadow_share")})
                if m.get("rollout")
                else None
            )
        else:
            manifest = model_store.read_manifest(self.settings.model_dir)
            m = manifest.to_json()
            runtime = served_runtime(manifest.runtime, self.settings.model_runtime)
            plan = await rollout_store.load(aclient)
        return f"model {m['version']} ({m['estimator']}, runtime {runtime})\n{describe(plan)}"

    async def _buckets(self, aclient: Any, http: httpx.AsyncClient, names: list[str]) -> dict[float, float]:
        if aclient is None:
            return {}
        pipe = aclient.pipeline(transaction=False)
        for n in names:
            pipe.hget(keys.worker(n), HeartbeatField.metrics)
        addrs = [a.decode() for a in await pipe.execute() if a]
        texts = await asyncio.gather(*(http.get(f"http://{a}/metrics") for a in addrs), return_exceptions=True)
        total: dict[float, float] = {}
        for t in texts:
            if isinstance(t, httpx.Response) and t.status_code == 200:
                for le, n in wait_buckets(t.text).items():
                    total[le] = total.get(le, 0.0) + n
        return total

    async def frame(self, aclient: Any, http: httpx.AsyncClient) -> str:
        st = await self._status(aclient, http)
        now = time.time()
        buckets = await self._buckets(aclient, http, list(st["workers"]))
        self.frames.append(Frame(now, st, buckets))
        if now - self._drift_at >= DRIFT_EVERY_S:
            try:
                self.drift_line = await self._drift(aclient, http)
            except Exception as exc:  # drift is one line of many: show why, keep the rest
                self.drift_line = f"drift: unavailable ({type(exc).__name__})"
            try:
                self.model_line = await self._model(http, aclient)
            except Exception as exc:
                self.model_line = f"model: unavailable ({type(exc).__name__})"
            self._drift_at = now
        return self.render()

    def _rates(self) -> tuple[float | None, float | None, float | None]:
        """Requests/s, error share and p95 wait over the frames of the last WINDOW_S seconds."""
        last = self.frames[-1]
        old = next((f for f in self.frames if last.at - f.at <= WINDOW_S), last)
        dt = last.at - old.at
        if dt <= 0:
            return None, None, None
        ok = last.status["ledger"].get(LedgerField.succeeded, 0) - old.status["ledger"].get(LedgerField.succeeded, 0)
        bad = last.status["ledger"].get(LedgerField.failed, 0) - old.status["ledger"].get(LedgerField.failed, 0)
        err = bad / (ok + bad) if ok + bad > 0 else 0.0
        diff = {le: n - old.buckets.get(le, 0.0) for le, n in last.buckets.items()}
        p95 = quantile_from_buckets(0.95, diff) if old.buckets else None
        return (ok + bad) / dt, err, p95

    def render(self) -> str:
        st = self.frames[-1].status
        rate, err, p95 = self._rates()
        src = self.url or "redis"
        lines = [f"inferpool status   {time.strftime('%H:%M:%S')}   source {src}   (Ctrl-C quits)", ""]
        lines.append(f"{'queue':<20}{'depth':>8}{'oldest wait':>14}")
        for q, v in st["queues"].items():
            lines.append(f"{q:<20}{v['depth']:>8}{v['oldest_age_s']:>12.3f} s")
        lines.append(f"unacked {st['unacked']} (oldest {st['unacked_oldest_age_s']:.1f} s)")
        fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
        lines.append(
            f"p95 wait {fmt(p95, '{:.3f} s')}   throughput {fmt(rate, '{:.1f} jobs/s')}   "
            f"errors {fmt(None if err is None else 100 * err, '{:.2f} %')}   (last {WINDOW_S:g} s)"
        )
        ledger = st["ledger"]
        lines.append(
            f"ledger accepted {ledger.get(LedgerField.accepted, 0)}  succeeded {ledger.get(LedgerField.succeeded, 0)}  "
            f"failed {ledger.get(LedgerField.failed, 0)}  in flight {ledger.get('in_flight', 0)}"
        )
        lines.append("")
        lines.append(
            f"workers {len(st['workers'])} live, pool {st['pool_processes']} processes, {st['busy_processes']} busy"
        )
        for name, w in sorted(st["workers"].items()):
            lines.append(f"  {name:<28}{w['processes']:>3} proc {w['busy']:>3} busy   {','.join(w['queues'])}")
        sc = st.get("scaler") or {}
        if sc.get("desired") is not None:
            lines.append(f"scaler desired {sc['desired']} actual {sc['actual']}")
        lines.append(self.model_line)
        lines.append(self.drift_line)
        return "\n".join(lines)


async def _run(ns: argparse.Namespace, api_key: str | None) -> int:
    from inferpool.redis_client import async_client

    s = get_settings()
    url = ns.url.rstrip("/") if ns.url else None
    viewer = Viewer(s, url)
    headers = {"X-API-Key": api_key} if api_key else {}
    # Redraw in place on a terminal; elsewhere (a pipe, a log file) frames follow each other.
    clear = CLEAR if not ns.frames and sys.stdout.isatty() else ""
    aclient = async_client(s.redis_url) if not url or ns.redis_too else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with httpx.AsyncClient(timeout=2.0, headers=headers) as http:
            for i in range(ns.frames or sys.maxsize):
                text = await viewer.frame(aclient, http)
                sys.stdout.write(clear + text + "\n")
                sys.stdout.flush()
                if stop.is_set() or (ns.frames and i + 1 >= ns.frames):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ns.interval)
    finally:
        if aclient is not None:
            await aclient.aclose()
    return 0


def run_status(ns: argparse.Namespace) -> int:
    try:
        api_key = api_key_from(ns)
    except ApiKeyError as exc:
        print(f"inferpool status: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(ns, api_key))
    except (httpx.HTTPError, redis.RedisError, OSError) as exc:
        print(f"inferpool status: cannot read the system ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1


def add_status_command(sub: Any) -> None:
    p = sub.add_parser("status", help="live terminal view: queues, waits, throughput, errors, workers, drift")
    p.add_argument("--url", help="read an API's /v1/monitoring views instead of Redis (REDIS_URL)")
    add_api_key_arguments(p)  # X-API-Key for --url, when the API requires keys
    p.add_argument("--redis-too", action="store_true", help="with --url, also read worker addresses from Redis")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--frames", type=int, default=0, help="print this many frames, without clearing, then exit")
    p.set_defaults(fn=run_status)
