"""Per-key quotas: a token bucket per key id and resource in Redis, shared by every API process.

Two resources: rows (every predicted row) and work-ms (the simulated work a request holds a work process
for: ``work_ms`` per task, so a job's ``work_ms`` counts once per chunk). Each bucket refills at its rate
(``INFERPOOL_QUOTA_ROWS_PER_S``, ``INFERPOOL_QUOTA_WORK_MS_PER_S``) up to ``rate x INFERPOOL_QUOTA_BURST_S``.
A request passes when every bucket holds its cost (or, for a cost over a full bucket, the bucket is full)
and then pays it all, so a big job passes on a full bucket and leaves it in debt. Refused: 429 with the
seconds until the cost would pass in Retry-After. Unset rates: no bucket, no Redis call.
"""

from __future__ import annotations

import math
import time

from api.errors import QuotaExceeded
from inferpool import keys, metrics
from inferpool.scripts import QuotaTake
from inferpool.settings import Settings

ROWS, WORK_MS = "rows", "work_ms"


class Quotas:
    def __init__(self, aredis, settings: Settings) -> None:
        self.redis = aredis
        self.burst_s = settings.quota_burst_s
        self.max_work_ms = settings.max_work_ms
        self.rates = {
            r: rate
            for r, rate in ((ROWS, settings.quota_rows_per_s), (WORK_MS, settings.quota_work_ms_per_s))
            if rate is not None
        }
        self._take = QuotaTake.register(aredis) if self.rates else None

    async def charge(self, key_id: str, rows: int, work_ms: int) -> None:
        """Pay for a request, or raise QuotaExceeded. ``rows=work_ms=0`` checks the key is not in debt."""
        if self._take is None:
            return
        costs = {ROWS: rows, WORK_MS: work_ms}
        names = list(self.rates)
        args: list[float] = [int(time.time() * 1000)]
        for r in names:
            args += [self.rates[r], self.rates[r] * self.burst_s, costs[r]]
        wait_ms, short = await self._take(keys=[keys.quota_bucket(key_id, r) for r in names], args=args)
        if wait_ms:
            for i, r in enumerate(names):
                if int(short) >> i & 1:
                    metrics.QUOTA_REFUSED.labels(key_id=key_id, resource=r).inc()
            raise QuotaExceeded(
                f"quota of key {key_id!r} exhausted ({', '.join(f'{self.rates[r]:g} {r}/s' for r in names)})",
                retry_after_s=math.ceil(int(wait_ms) / 1000),
            )
        if ROWS in self.rates and rows:
            metrics.QUOTA_CHARGED_ROWS.labels(key_id=key_id).inc(rows)
        if WORK_MS in self.rates and work_ms:
            metrics.QUOTA_CHARGED_WORK.labels(key_id=key_id).inc(work_ms / 1000)

    async def charge_predict(self, key_id: str, rows: int, work_ms: int) -> None:
        """A one-call request: one task holding a process ``work_ms``; a work_ms over the limit is left to
        the route's 422, before any quota is spent."""
        if work_ms <= self.max_work_ms:
            await self.charge(key_id, rows=rows, work_ms=work_ms)
