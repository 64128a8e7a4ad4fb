"""A bounded background client for tests: jobs at a fixed interval, at most ``max_requests``, then polled.

Each submission is recorded with its rows' seed, so a test can recompute the expected predictions and
check every accepted job came back whole and in order.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import httpx
import numpy as np

N_FEATURES = 20


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


@dataclass
class Submitted:
    seed: int
    n: int
    work_ms: int
    status: int  # 0: no answer (connection refused, timed out)
    job_id: str | None = None


@dataclass
class BoundedLoad:
    """``POST /v1/jobs`` every ``interval_s`` from a thread, cycling through ``kinds`` (rows, work_ms)."""

    url: str
    kinds: tuple[tuple[int, int], ...]
    interval_s: float = 0.1
    max_requests: int = 200
    seed0: int = 10_000
    submitted: list[Submitted] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BoundedLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="bounded-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as c:
            tasks = []
            for i in range(self.max_requests):
                if self._stop.is_set():
                    break
                tasks.append(asyncio.create_task(self._one(c, i)))
                await asyncio.sleep(self.interval_s)
            await asyncio.gather(*tasks)

    async def _one(self, c: httpx.AsyncClient, i: int) -> None:
        n, work_ms = self.kinds[i % len(self.kinds)]
        seed = self.seed0 + i
        try:
            r = await c.post("/v1/jobs", json={"instances": rows(n, seed).tolist(), "work_ms": work_ms})
        except httpx.HTTPError:
            self.submitted.append(Submitted(seed, n, work_ms, 0))
            return
        job_id = r.json().get("job_id") if r.status_code == 202 else None
        self.submitted.append(Submitted(seed, n, work_ms, r.status_code, job_id))

    @property
    def accepted(self) -> list[Submitted]:
        return [s for s in self.submitted if s.status == 202]
