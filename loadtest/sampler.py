"""Samples the API's monitoring status once a second: queue depth and age, pool size, scaler decisions.

The endpoint may be missing, slow or failing (it is the system under load):
a failed read is recorded as a sample with ``ok=False`` and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from loadtest.http import TRANSPORT_ERRORS, HttpClient, Response
from loadtest.records import Decision, SystemSample

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
SAMPLE_TIMEOUT_S = 0.9


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def parse_status(data: dict[str, Any], t_s: float, start_epoch: float) -> tuple[SystemSample, list[Decision]]:
    """One status document -> a sample (totals over queues and workers) and the scaler decisions it lists."""
    queues = data.get("queues") or {}
    depths = [_int(q.get("depth")) for q in queues.values() if isinstance(q, dict)]
    ages = [_float(q.get("oldest_age_s")) for q in queues.values() if isinstance(q, dict)]
    workers = data.get("workers") or {}
    busy = [_int(w.get("busy")) for w in workers.values() if isinstance(w, dict)]
    scaler = data.get("scaler") or {}
    sample = SystemSample(
        t_s=t_s,
        ok=True,
        queue_depth=sum(d for d in depths if d is not None) if queues else None,
        oldest_age_s=max((a for a in ages if a is not None), default=0.0) if queues else None,
        unacked=_int(data.get("unacked")),
        unacked_oldest_age_s=_float(data.get("unacked_oldest_age_s")),
        pool_processes=_int(data.get("pool_processes")),
        workers=len(workers) if isinstance(workers, dict) else None,
        busy=sum(b for b in busy if b is not None) if workers else None,
        scaler_desired=_int(scaler.get("desired")),
        scaler_actual=_int(scaler.get("actual")),
    )
    decisions = []
    for d in scaler.get("decisions") or []:
        epoch = _float(d.get("t")) if isinstance(d, dict) else None
        if epoch is None or epoch < start_epoch:  # the scaler's log outlives runs: earlier ones are not ours
            continue
        decisions.append(
            Decision(
                t_s=epoch - start_epoch,
                epoch=epoch,
                direction=str(d.get("direction", "")),
                from_=_int(d.get("from")),
                to=_int(d.get("to")),
                reason=str(d.get("reason", "")),
            )
        )
    return sample, decisions


class StatusClient(Protocol):
    """What the sampler needs of a client (an :class:`HttpClient`, or a fake in tests)."""

    async def get(self, path: str, *, timeout: float | None = None) -> Response: ...


class StatusSampler:
    """Collects samples and de-duplicated decisions until ``stop`` is set."""

    def __init__(self, url: str, start_epoch: float, clock: Callable[[], float]) -> None:
        self.url, self.start_epoch, self.clock = url, start_epoch, clock
        u = urlsplit(url)
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.samples: list[SystemSample] = []
        self.decisions: dict[tuple[float, str, int | None, int | None], Decision] = {}
        self._failures = 0

    def client(self, headers: Mapping[str, str]) -> HttpClient:
        """A client of its own (the status URL may be on another host), with one connection kept open."""
        return HttpClient(self.url, headers=headers, timeout_s=SAMPLE_TIMEOUT_S, max_idle=1)

    async def run(self, client: StatusClient, stop: asyncio.Event) -> None:
        tick = 0
        while not stop.is_set():
            await self.sample(client)
            tick += 1
            delay = tick * SAMPLE_INTERVAL_S - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await self.sample(client)  # one last look after the load ended

    async def sample(self, client: StatusClient) -> None:
        t_s = self.clock()
        try:
            status, body = await client.get(self.path, timeout=SAMPLE_TIMEOUT_S)
            if not 200 <= status < 300:
                raise ValueError(f"HTTP {status}")
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError("status is not a JSON object")
            sample, decisions = parse_status(data, t_s, self.start_epoch)
        except (*TRANSPORT_ERRORS, TimeoutError, ValueError, AttributeError) as e:
            self._failures += 1
            if self._failures == 1:
                logger.warning("status endpoint %s failed (%s); recording gaps and going on", self.url, e)
            self.samples.append(SystemSample(t_s, ok=False))
            return
        self.samples.append(sample)
        for d in decisions:
            self.decisions.setdefault((d.epoch, d.direction, d.from_, d.to), d)
