"""What one API process holds while it runs: settings, clients, dispatcher, batcher, jobs, model manifest."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from api.batcher import Batcher
from api.dispatch import Dispatcher
from api.jobs import JobStore
from inferpool import keys, queues
from inferpool.errors import BrokerUnavailable, ModelError, Overloaded
from inferpool.model_store import Manifest, read_manifest
from inferpool.settings import Settings

logger = logging.getLogger(__name__)

SNAPSHOT_MAX_AGE_S = 0.25


@dataclass
class ApiState:
    settings: Settings
    redis: object
    dispatcher: Dispatcher
    batcher: Batcher
    jobs: JobStore
    _manifest: Manifest | None = None
    _snapshot: queues.Snapshot | None = None
    _snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def manifest(self) -> Manifest:
        """The served model's manifest; re-read if it was missing at start (trained later)."""
        if self._manifest is None:
            self._manifest = read_manifest(self.settings.model_dir)
        return self._manifest

    def reload_manifest(self) -> Manifest:
        self._manifest = None
        return self.manifest()

    async def snapshot(self) -> queues.Snapshot:
        """Queue state, shared by concurrent requests and refreshed at most every 250 ms."""
        snap = self._snapshot
        if snap is not None and time.time() - snap.taken_at < SNAPSHOT_MAX_AGE_S:
            return snap
        async with self._snapshot_lock:
            snap = self._snapshot
            if snap is None or time.time() - snap.taken_at >= SNAPSHOT_MAX_AGE_S:
                try:
                    snap = await queues.asnapshot(self.redis)
                except Exception as exc:
                    raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
                self._snapshot = snap
        return snap

    async def admit(self, queue_names: tuple[str, ...], max_wait_s: float) -> None:
        """Backpressure: refuse new work when what waits already waits too long, or the backlog is too big."""
        snap = await self.snapshot()
        oldest = max(snap.queues[q].oldest_age_s for q in queue_names)
        if oldest > max_wait_s:
            raise Overloaded(f"queue wait {oldest:.1f} s is over the {max_wait_s:g} s limit", retry_after_s=oldest)
        if snap.depth > self.settings.max_backlog_messages:
            raise Overloaded(f"backlog of {snap.depth} messages is over the cap", retry_after_s=max(1.0, oldest))


def build_state(settings: Settings, aredis, celery) -> ApiState:
    dispatcher = Dispatcher(celery, settings.redis_url, settings.result_ttl_s)
    batcher = Batcher(
        dispatcher,
        max_rows=settings.batch_max_rows,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        budget_s=settings.batch_latency_budget_ms / 1000,
        max_in_flight=settings.batch_max_in_flight,
        reply_timeout_s=settings.predict_timeout_s,
    )
    jobs = JobStore(aredis, dispatcher, settings.job_chunk_rows, settings.result_ttl_s)
    state = ApiState(settings=settings, redis=aredis, dispatcher=dispatcher, batcher=batcher, jobs=jobs)
    try:
        state.manifest()
    except ModelError as exc:
        logger.warning("%s; predict routes answer 503 until a model exists", exc)
    return state


ONLINE_QUEUES = (keys.QUEUE_ONLINE, keys.QUEUE_WORK)
JOB_QUEUES = (keys.QUEUE_BULK, keys.QUEUE_WORK)
