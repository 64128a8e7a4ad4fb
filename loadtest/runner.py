"""The open-loop load generator: ``run_loadtest(config) -> results directory``.

Arrivals are fixed up front from the profile (see ``profile``) and sent by the
clock, whatever the server does: a slow answer never delays the next request
(no coordinated omission). At most ``max_in_flight`` requests are open; an
arrival over that cap is recorded as ``dropped`` instead of being delayed.

Latency is timed from each arrival's *scheduled* time, not from when the
generator got round to sending it: a generator that falls behind (CPU-bound)
shows in the latency figures, as a user would see it; how far behind is kept
apart as the send lag (``sent_s - scheduled_s``, summary ``send_lag_s``).
Each request has a total deadline of ``timeout_s`` from its scheduled time.

SIGINT/SIGTERM stop new arrivals and wait for open requests (each bounded by
its timeout); a second signal abandons them (recorded as ``cancelled``).
Either way every file is written.

The generator shares the CPU with the system it measures, so the hot path is
lean: a keep-alive client of our own (``http``), request heads built once,
phase names looked up once per run, running counters for the progress line.
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

import numpy as np

from loadtest import records as rec
from loadtest.config import LoadtestConfig
from loadtest.http import HttpClient
from loadtest.profile import Profile
from loadtest.records import RequestRecord
from loadtest.routes import Payloads, RouteSender
from loadtest.sampler import StatusSampler

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
# While sleeping towards the next arrival, look at the stop flag at least this often.
STOP_CHECK_S = 0.25
# When behind schedule, still yield to the event loop every this many arrivals.
YIELD_EVERY = 32
# A generator later than this at p99 could not keep its schedule (client CPU bound).
SEND_LAG_WARN_S = 0.05
_OK, _ERROR, _TIMEOUT, _DROPPED = rec.Outcome.OK, rec.Outcome.ERROR, rec.Outcome.TIMEOUT, rec.Outcome.DROPPED


class LoadRun:
    """One run's state: the schedule, open requests and everything recorded."""

    def __init__(self, config: LoadtestConfig, profile: Profile, seed: int, stream: TextIO | None) -> None:
        self.config, self.profile, self.stream = config, profile, stream
        rng = np.random.default_rng(seed)
        self.times = profile.arrival_times(config.arrivals, rng)
        self.work = config.mix.sample(rng, len(self.times))
        self.phases = phase_names(profile, self.times)
        self.payloads = Payloads(config.route, config.rows, config.features, rng)
        self.records: list[RequestRecord] = []
        self.pending: dict[int, tuple[float, int]] = {}  # id -> (scheduled_s, work_ms) of open requests
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self.start_epoch = 0.0
        self.load_duration_s = 0.0
        self.stopped_early = False
        # Running counts for the progress line (recounting every record each second is O(n) per second).
        self.counts = dict.fromkeys(rec.Outcome, 0)
        self._recent_ok: list[float] = []  # latencies of ok answers since the last progress line
        self._t0 = 0.0
        self._sender: RouteSender | None = None
        self._failed_unexpectedly = False

    def clock(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def run(self) -> StatusSampler:
        loop = asyncio.get_running_loop()
        restore = _install_signal_handlers(loop, self._on_signal)
        headers = {"X-API-Key": self.config.api_key} if self.config.api_key else {}
        client = HttpClient(self.config.base_url, headers=headers, max_idle=self.config.max_in_flight)
        self._sender = RouteSender(client, self.config.route, self.config.rows)
        sampler = StatusSampler(self.config.resolved_status_url, 0.0, self.clock)
        try:
            async with client, sampler.client(headers) as status_client:
                self._t0, self.start_epoch = loop.time(), time.time()
                sampler.start_epoch = self.start_epoch
                sampler_done = asyncio.Event()
                side_tasks = [
                    asyncio.create_task(sampler.run(status_client, sampler_done)),
                    asyncio.create_task(self._progress(sampler_done)),
                ]
                await self._generate()
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

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        t0, stop, pending, tasks = self._t0, self.stop, self.pending, self.tasks
        cap = self.config.max_in_flight
        schedule = zip(self.times.tolist(), self.work.tolist(), self.phases, strict=True)
        for i, (t, work, phase) in enumerate(schedule):
            delay = t0 + t - loop.time()
            if delay > 0:
                while delay > 0 and not stop.is_set():
                    await asyncio.sleep(min(delay, STOP_CHECK_S))
                    delay = t0 + t - loop.time()
            elif i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if stop.is_set():
                self.stopped_early = True
                return
            if len(pending) >= cap:
                self._record(RequestRecord(i, t, None, None, rec.DROPPED, work, phase))
                continue
            pending[i] = (t, work)
            task = loop.create_task(self._one(i, t, work, phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _one(self, i: int, scheduled_s: float, work: int, phase: str) -> None:
        assert self._sender is not None
        body = self.payloads.body(work)
        sent_s = self.clock()
        try:
            status = await self._sender.send(body, self._t0 + scheduled_s + self.config.timeout_s)
        except asyncio.CancelledError:
            status = rec.CANCELLED
        except Exception:  # a bug here must not lose the request from the accounting
            if not self._failed_unexpectedly:
                logger.exception("unexpected failure sending request %d", i)
                self._failed_unexpectedly = True
            status = rec.ERROR
        self.pending.pop(i, None)
        self._record(RequestRecord(i, scheduled_s, sent_s, self.clock() - scheduled_s, status, work, phase))

    def _record(self, r: RequestRecord) -> None:
        self.records.append(r)
        kind = rec.outcome(r.status)
        self.counts[kind] += 1
        if kind is _OK:
            self._recent_ok.append(r.latency_s or 0.0)

    async def _drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        # Tasks cancelled before their first step never ran _one: account for them here.
        now = self.clock()
        for i, (t, work) in sorted(self.pending.items()):
            self._record(RequestRecord(i, t, now, now - t, rec.CANCELLED, work, self.profile.phase_at(t).name))
        self.pending.clear()

    async def _progress(self, done: asyncio.Event) -> None:
        if self.stream is None:
            return
        tty = self.stream.isatty()
        offered_seen = 0
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), PROGRESS_INTERVAL_S)
            offered = len(self.records) + len(self.pending)
            self.stream.write(self._progress_line(offered - offered_seen) + ("\r" if tty else "\n"))
            self.stream.flush()
            offered_seen = offered
        if tty:
            self.stream.write("\n")

    def _progress_line(self, offered: int) -> str:
        """The last interval's offered and achieved rates and p95, and running totals of the rest."""
        ok, self._recent_ok = self._recent_ok, []
        p95 = rec.percentiles(ok)[1]
        p95_s = "-" if p95 is None else f"{p95 * 1000:.0f}ms"
        c = self.counts
        return (
            f"{self.clock():5.0f}s/{self.profile.duration_s:.0f}s  offered {offered / PROGRESS_INTERVAL_S:6.1f}/s  "
            f"achieved {len(ok) / PROGRESS_INTERVAL_S:6.1f}/s  p95 {p95_s:>6}  open {len(self.pending):4d}  "
            f"errors {c[_ERROR]}  timeouts {c[_TIMEOUT]}  dropped {c[_DROPPED]}\x1b[K"
        )


def phase_names(profile: Profile, times: np.ndarray) -> list[str]:
    """The phase of each arrival (``profile.phase_at``), for all arrivals at once."""
    ends = np.array([p.end_s for p in profile.phases])
    idx = np.minimum(np.searchsorted(ends, times, side="right"), len(ends) - 1)
    names = [p.name for p in profile.phases]
    return [names[k] for k in idx.tolist()]


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


def run_loadtest(config: LoadtestConfig) -> Path:
    """Run one load test and write its results; returns the results directory."""
    out = config.resolved_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    profile = config.build_profile()
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    stream = sys.stderr if config.progress else None
    run = LoadRun(config, profile, seed, stream)
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
            "may limit the offered rate, and the latencies (timed from the schedule) include that lag",
            summary["send_lag_s"]["p99"] * 1000,
        )
    if config.plot:
        from loadtest.report import plot

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
