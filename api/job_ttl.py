"""Job keys live as long as the work: a job's rows and state never expire while it is in flight.

A job's keys are written with the result TTL (``INFERPOOL_RESULT_TTL_S``). Without more, that TTL ran from
submission: a job queued longer lost its rows, read 404, and stayed counted in flight. Here, each API process
goes over the in-flight set (accepted jobs not finished, ``keys.INFLIGHT``) every ``period_s`` and sets every
key of each job (hash, done set, rows and results of every chunk) to expire ``ttl + period_s`` from now.

When a job finishes, the workers' finishing script takes it out of the set, and its keys run out the TTL they
have: results stay readable between ``ttl`` and ``ttl + period_s`` after the job ends (the last chunk's
result is written with the TTL at that moment). No worker-side change is needed, passes from several API
processes do the same thing, and a job that is never accepted (a submit that failed) still expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from inferpool import keys
from inferpool.records import InflightEntry, InflightKind, JobField

logger = logging.getLogger(__name__)

# Jobs read per page of the in-flight set; a job skipped when the set changes under a page is caught a
# period later, well within its TTL (the period is at most a third of it).
PAGE = 500
PERIOD_MAX_S = 60.0
PERIOD_MIN_S = 0.5


def period_of(ttl_s: float) -> float:
    return min(PERIOD_MAX_S, max(PERIOD_MIN_S, ttl_s / 3))


class InflightTtl:
    """The loop that keeps in-flight jobs' keys alive (one per API process)."""

    def __init__(self, aredis, ttl_s: int) -> None:
        self.redis = aredis
        self.period_s = period_of(ttl_s)
        self.ttl_s = int(ttl_s + self.period_s + 1)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="inflight-ttl")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.extend_once()
            except Exception as exc:  # Redis away for a moment: the next pass makes up for it
                logger.warning("in-flight job TTLs not extended: %s", type(exc).__name__)
            await asyncio.sleep(self.period_s)

    async def extend_once(self) -> int:
        """One pass over the in-flight set; returns the number of jobs whose keys were extended."""
        extended = 0
        start = 0
        while True:
            members = await self.redis.zrange(keys.INFLIGHT, start, start + PAGE - 1)
            entries = [InflightEntry.decode(m) for m in members]
            jobs = [e.ident for e in entries if e is not None and e.kind is InflightKind.job]
            if jobs:
                extended += await self._extend(jobs)
            if len(members) < PAGE:
                return extended
            start += PAGE

    async def _extend(self, job_ids: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), JobField.n_chunks)
        counts = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        alive = 0
        for job_id, n in zip(job_ids, counts, strict=True):
            if n is None:  # expired or never recorded: the re-dispatcher drops it from the set
                continue
            alive += 1
            pipe.expire(keys.job(job_id), self.ttl_s)
            pipe.expire(keys.job_done_chunks(job_id), self.ttl_s)
            for k in range(int(n)):
                pipe.expire(keys.job_input(job_id, k), self.ttl_s)
                pipe.expire(keys.job_output(job_id, k), self.ttl_s)
        await pipe.execute()
        return alive
