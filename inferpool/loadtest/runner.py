"""The open-loop load generator: ``run_loadtest(config) -> results directory``.

Arrivals are fixed up front from the profile (see ``profile``) and sent by the
clock, whatever the server does: a slow answer never delays the next request
(no coordinated omission). At most ``max_in_flight`` requests are open; an
arrival over that cap is recorded as ``dropped`` instead of being delayed.
Each request has a total deadline of ``timeout_s``.

SIGINT/SIGTERM stop new arrivals and wait for open requests (each bounded by
its timeout); a second signal abandons them (recorded as ``cancelled``).
Either way every file is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from inferpool.loadtest import records as rec
from inferpool.loadtest.config import LoadtestConfig
from inferpool.loadtest.profile import Profile
from inferpool.loadtest.records import RequestRecord
from inferpool.loadtest.routes import Payloads, send
from inferpool.loadtest.sampler import StatusSampler

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
# While sleeping towards the next arrival, look at the stop flag at least this often.
STOP_CHECK_S = 0.25
# When behind schedule, still yield to the event loop every this many arrivals.
YIELD_EVERY = 32
# A generator later than this at p99 could not keep its schedule (client CPU bound).
SEND_LAG_WARN_S = 0.05


class LoadRun:
    """One run's state: the schedule, open requests and everything recorded."""

    def __init__(self, config: LoadtestConfig, profile: Profile, seed: int, stream: TextIO | None) -> None:
        self.config, self.profile, self.stream = config, profile, stream
        rng = np.random.default_rng(seed)
        self.times = profile.arrival_times(config.arrivals, rng)
        self.work = config.mix.sample(rng, len(self.times))
        self.payloads = Payloads(config.route, config.rows, config.features, rng)
        self.records: list[RequestRecord] = []
        self.pending: dict[int, tuple[float, int]] = {}  # id -> (scheduled_s, work_ms) of open requests
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self.start_epoch = 0.0
        self.load_duration_s = 0.0
        self.stopped_early = False
        self._t0 = 0.0
        self._failed_unexpectedly = False

    def clock(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def run(self) -> StatusSampler:
        loop = asyncio.get_running_loop()
        restore = _install_signal_handlers(loop, self._on_signal)
        headers = {"X-API-Key": self.config.api_key} if self.config.api_key else {}
        n = self.config.max_in_flight
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        client = httpx.AsyncClient(
            base_url=self.config.base_url, headers=headers, limits=limits, timeout=self.config.timeout_s
        )
        try:
            async with client, StatusSampler.client(headers) as status_client:
                self._t0, self.start_epoch = loop.time(), time.time()
                sampler = StatusSampler(self.config.resolved_status_url, self.start_epoch, self.clock)
                sampler_done = asyncio.Event()
                side_tasks = [
                    asyncio.create_task(sampler.run(status_client, sampler_done)),
                    asyncio.create_task(self._progress(sampler_done)),
                ]
                await self._generate(client)
                self.load_duration_s = self.clock() if self.stopped_early else self.profile.duration_s
                await self._drain()
                sampler_done.set()
                await asyncio.gather(*side_tasks)
        finally:
            restore()
        return sampler

    def _on_signal(self) -> None:
        if not self.stop.is_set():
            logger.warning(
                "stopping: no new arrivals; waiting for %d open requests (again to abandon)", len(self.tasks)
            )
            self.stop.set()
        else:
            for task in list(self.tasks):
                task.cancel()

    async def _generate(self, client: httpx.AsyncClient) -> None:
        for i, (t, work) in enumerate(zip(self.times.tolist(), self.work.tolist(), strict=True)):
            delay = t - self.clock()
            if delay > 0:
                while delay > 0 and not self.stop.is_set():
                    await asyncio.sleep(min(delay, STOP_CHECK_S))
                    delay = t - self.clock()
            elif i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if self.stop.is_set():
                self.stopped_early = True
                return
            phase = self.profile.phase_at(t).name
            if len(self.pending) >= self.config.max_in_flight:
                self.records.append(RequestRecord(i, t, None, None, rec.DROPPED, work, phase))
                continue
            self.pending[i] = (t, work)
            task = asyncio.create_task(self._one(client, i, t, work, phase))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, client: httpx.AsyncClient, i: int, scheduled_s: float, work: int, phase: str) -> None:
        body = self.payloads.body(work)
        sent_s = self.clock()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                status = await send(client, self.config.route, body, self.config.rows)
        except TimeoutError:
            status = rec.TIMEOUT
        except asyncio.CancelledError:
            status = rec.CANCELLED
        except Exception:  # a bug here must not lose the request from the accounting
            if not self._failed_unexpectedly:
                logger.exception("unexpected failure sending request %d", i)
                self._failed_unexpectedly = True
            status = rec.ERROR
        self.pending.pop(i, None)
        self.records.append(RequestRecord(i, scheduled_s, sent_s, self.clock() - sent_s, status, work, phase))

    async def _drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        # Tasks cancelled before their first step never ran _one: account for them here.
        now = self.clock()
        for i, (t, work) in sorted(self.pending.items()):
            self.records.append(RequestRecord(i, t, now, 0.0, rec.CANCELLED, work, self.profile.phase_at(t).name))
        self.pending.clear()

    async def _progress(self, done: asyncio.Event) -> None:
        if self.stream is None:
            return
        tty = self.stream.isatty()
        seen = 0
        offered_seen = 0
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), PROGRESS_INTERVAL_S)
            new = self.records[seen:]
            seen = len(self.records)
            offered = seen + len(self.pending)
            self.stream.write(self._progress_line(new, offered - offered_seen) + ("\r" if tty else "\n"))
            self.stream.flush()
            offered_seen = offered
        if tty:
            self.stream.write("\n")

    def _progress_line(self, new: list[RequestRecord], offered: int) -> str:
        ok = [r.latency_s or 0.0 for r in new if rec.outcome(r.status) is rec.Outcome.OK]
        p95 = rec.percentiles(ok)[1]
        p95_s = "-" if p95 is None else f"{p95 * 1000:.0f}ms"
        kinds = [rec.outcome(r.status) for r in self.records]
        errors = sum(k is rec.Outcome.ERROR for k in kinds)
        timeouts = sum(k is rec.Outcome.TIMEOUT for k in kinds)
        dropped = sum(k is rec.Outcome.DROPPED for k in kinds)
        return (
            f"{self.clock():5.0f}s/{self.profile.duration_s:.0f}s  offered {offered / PROGRESS_INTERVAL_S:6.1f}/s  "
            f"achieved {len(ok) / PROGRESS_INTERVAL_S:6.1f}/s  p95 {p95_s:>6}  open {len(self.pending):4d}  "
            f"errors {errors}  timeouts {timeouts}  dropped {dropped}\x1b[K"
        )


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, handler: Any) -> Any:
    """Route SIGINT/SIGTERM to ``handler``; returns a function that puts the old handlers back."""
    old: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, handler)
            old[sig] = previous
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    def restore() -> None:
        for sig, previous in old.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)

    return restore


def quiet_httpx() -> None:
    """httpx logs every request at INFO: thousands of lines a second here, and CPU the generator needs."""
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET:
        httpx_logger.setLevel(logging.WARNING)


def run_loadtest(config: LoadtestConfig) -> Path:
    """Run one load test and write its results; returns the results directory."""
    out = config.resolved_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    profile = config.build_profile()
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    stream = sys.stderr if config.progress else None
    run = LoadRun(config, profile, seed, stream)
    quiet_httpx()
    logger.info(
        "load test: %d arrivals over %.0f s at %.1f req/s mean", len(run.times), profile.duration_s, profile.mean_rate()
    )
    sampler = asyncio.run(run.run())
    summary = write_results(out, config, profile, seed, run, sampler)
    if stream is not None:
        stream.write(summary_line(summary, out) + "\n")
    if summary["send_lag_s"]["p99"] is not None and summary["send_lag_s"]["p99"] > SEND_LAG_WARN_S:
        logger.warning(
            "the generator fell behind its schedule (send lag p99 %.0f ms): this machine's CPU, not the server, "
            "may limit the offered rate",
            summary["send_lag_s"]["p99"] * 1000,
        )
    if config.plot:
        from inferpool.loadtest.report import plot

        plot(out)
    return out


def write_results(
    out: Path, config: LoadtestConfig, profile: Profile, seed: int, run: LoadRun, sampler: StatusSampler
) -> dict[str, Any]:
    records = sorted(run.records, key=lambda r: r.id)
    rec.write_requests(out / rec.REQUESTS_CSV, records)
    rec.write_seconds(out / rec.SECONDS_CSV, rec.per_second(records))
    rec.write_system(out / rec.SYSTEM_CSV, sampler.samples)
    rec.write_decisions(out / rec.DECISIONS_CSV, sampler.decisions.values())
    phases = {
        "profile": str(config.profile),
        "duration_s": profile.duration_s,
        "stopped_at_s": run.load_duration_s if run.stopped_early else None,
        "phases": list(profile.phases),
    }
    rec.write_json(out / rec.PHASES_JSON, phases)
    summary = {
        "config": config.describe() | {"seed": seed},
        "start_epoch": run.start_epoch,
        "planned_duration_s": profile.duration_s,
        "target_rate_rps": profile.mean_rate(),
        "stopped_early": run.stopped_early,
        **rec.summarize(records, run.load_duration_s),
        "status_samples": len(sampler.samples),
        "status_failures": sum(not s.ok for s in sampler.samples),
        "scaler_decisions": len(sampler.decisions),
    }
    rec.write_json(out / rec.SUMMARY_JSON, summary)
    return summary


def summary_line(s: dict[str, Any], out: Path) -> str:
    lat = s["latency_s"]
    ms = "/".join("-" if lat[k] is None else f"{lat[k] * 1000:.0f}" for k in ("p50", "p95", "p99"))
    return (
        f"sent {s['sent']}  ok {s['ok']}  errors {s['errors_total']}  timeouts {s['timeouts']}  "
        f"dropped {s['dropped']}  offered {s['offered_rate_rps']:.1f}/s  achieved {s['achieved_rate_rps']:.1f}/s  "
        f"p50/p95/p99 {ms} ms  -> {out}"
    )
