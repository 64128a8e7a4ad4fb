"""What one API process holds while it runs: settings, clients, dispatcher, batcher, jobs, model manifest."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from api.batcher import Batcher
from api.dispatch import Dispatcher
from api.idempotency import Claims
from api.jobs import JobStore
from api.quota import Quotas
from api.rollout import Rollout
from inferpool import keys, queues, redis_fit, status
from inferpool.errors import BrokerUnavailable, ModelError, Overloaded
from inferpool.model_store import Manifest, read_manifest
from inferpool.records import TaskSample, service_time_s
from inferpool.redis_client import sync_client
from inferpool.settings import Settings

logger = logging.getLogger(__name__)

SNAPSHOT_MAX_AGE_S = 0.25
# Serving processes and service times change slowly; reading them (a hash per worker, 50 samples per queue)
# with every queue snapshot was ~4 % of the API's CPU under load.
CAPACITY_MAX_AGE_S = 1.0
# Recent task run times read per queue to estimate its service time.
SERVICE_SAMPLES = 50
# Redis over its memory share frees up as work finishes (results expire, inputs go once done): minutes at
# worst, but a client retrying after a few seconds costs one cheap 429.
MEMORY_RETRY_AFTER_S = 5.0


def predicted_wait_s(depth: int, oldest_age_s: float, service_s: float, processes: int) -> float:
    """How long new work would wait on a queue: the longer of what the oldest message has waited
    already and what the backlog will take the processes serving it (``depth * service / processes``).

    The second term sheds at the start of a burst, before anything has aged; with no service time
    measured yet or no process serving the queue only the first applies (a worker may be on its way).
    """
    if service_s <= 0 or processes <= 0:
        return oldest_age_s
    return max(oldest_age_s, depth * service_s / processes)


@dataclass(frozen=True)
class Capacity:
    """Per queue: processes of live workers consuming it, and mean recent task run time (s)."""

    processes: dict[str, int]
    service_s: dict[str, float]


@dataclass
class ApiState:
    settings: Settings
    redis: object
    dispatcher: Dispatcher
    batcher: Batcher
    jobs: JobStore
    quotas: Quotas
    claims: Claims
    rollout: Rollout
    _manifest: Manifest | None = None
    _snapshot: queues.Snapshot | None = None
    _capacity: Capacity = field(default_factory=lambda: Capacity({}, {}))
    _capacity_at: float = 0.0
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
                    if snap.taken_at - self._capacity_at >= CAPACITY_MAX_AGE_S:
                        self._capacity, self._capacity_at = await self._read_capacity(), snap.taken_at
                except Exception as exc:
                    raise BrokerUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
                self._snapshot = snap
        return snap

    async def _read_capacity(self) -> Capacity:
        beats = await status.aheartbeats(self.redis)
        pipe = self.redis.pipeline(transaction=False)
        for q in keys.ALL_QUEUES:
            pipe.xrevrange(keys.task_samples(q), count=SERVICE_SAMPLES)
        res = await pipe.execute()
        processes = dict.fromkeys(keys.ALL_QUEUES, 0)
        for hb in beats:
            for q in hb.queues:
                if q in processes:
                    processes[q] += hb.processes
        service = {}
        for q, entries in zip(keys.ALL_QUEUES, res, strict=True):
            service[q] = service_time_s([TaskSample.decode(fields) for _, fields in entries]) or 0.0
        return Capacity(processes, service)

    def queue_wait_s(self, snap: queues.Snapshot, queue: str) -> float:
        q, cap = snap.queues[queue], self._capacity
        return predicted_wait_s(q.depth, q.oldest_age_s, cap.service_s.get(queue, 0.0), cap.processes.get(queue, 0))

    async def admit(self, queue_names: tuple[str, ...], max_wait_s: float, incoming_bytes: int = 0) -> None:
        """Backpressure: refuse new work when its predicted wait is over ``max_wait_s``, the backlog is too big,
        or Redis (``incoming_bytes`` more, when the caller knows them) would be over its memory share.

        Raises Overloaded (429 with Retry-After), or BrokerUnavailable (503) when Redis cannot be read or
        may evict keys.
        """
        snap = await self.snapshot()
        self._check_memory(snap, incoming_bytes)
        wait = max(self.queue_wait_s(snap, q) for q in queue_names)
        if wait > max_wait_s:
            msg = f"predicted queue wait {wait:.1f} s is over the {max_wait_s:g} s limit"
            raise Overloaded(msg, retry_after_s=wait)
        if snap.depth > self.settings.max_backlog_messages:
            raise Overloaded(
                f"backlog of {snap.depth} messages is over the cap of {self.settings.max_backlog_messages}",
                retry_after_s=max(1.0, wait),
            )

    def _check_memory(self, snap: queues.Snapshot, incoming_bytes: int) -> None:
        """Shed by bytes before Redis is full: accepted work must still fit, and a full Redis refuses every
        write, acks included. An evicting policy set after start is refused here too."""
        mem, s = snap.memory, self.settings
        if mem is None:
            return
        refusal = redis_fit.eviction_refusal(mem.policy, s.allow_eviction)
        if refusal:
            raise BrokerUnavailable(refusal)
        if mem.over(s.redis_memory_shed_share, incoming_bytes):
            raise Overloaded(
                f"Redis holds {mem.used_bytes / mem.max_bytes:.0%} of its maxmemory "
                f"({mem.used_bytes} of {mem.max_bytes} bytes); new work waits below {s.redis_memory_shed_share:.0%}",
                retry_after_s=MEMORY_RETRY_AFTER_S,
            )


def check_redis_fit(settings: Settings) -> None:
    """At start: refuse to run on a Redis that may evict keys (:class:`redis_fit.EvictionPolicyRefused`).
    Unreachable now, it is checked with every queue snapshot instead (admission answers 503 meanwhile)."""
    client = sync_client(settings.redis_url)
    try:
        redis_fit.check_policy(client, settings.allow_eviction)
    except redis_fit.EvictionPolicyRefused as exc:
        logger.error("%s", exc)
        raise
    except Exception as exc:
        logger.warning("cannot check Redis's maxmemory-policy at start (%s); admission checks it", type(exc).__name__)
    finally:
        client.close()


def build_state(settings: Settings, aredis) -> ApiState:
    check_redis_fit(settings)
    dispatcher = Dispatcher(settings.redis_url, settings.result_ttl_s)
    rollout = Rollout(aredis, settings, dispatcher.instance)
    batcher = Batcher(
        dispatcher,
        max_rows=settings.batch_max_rows,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        budget_s=settings.batch_latency_budget_ms / 1000,
        max_in_flight=settings.batch_max_in_flight,
        reply_timeout_s=settings.predict_timeout_s,
        on_answer=rollout.observe,
    )
    secret = settings.job_id_secret.get_secret_value() if settings.job_id_secret else None
    jobs = JobStore(aredis, dispatcher, settings.job_chunk_rows, settings.result_ttl_s, secret)
    state = ApiState(
        settings=settings, redis=aredis, dispatcher=dispatcher, batcher=batcher, jobs=jobs,
        quotas=Quotas(aredis, settings), claims=Claims(aredis, settings.result_ttl_s), rollout=rollout,
    )  # fmt: skip
    try:
        state.manifest()
    except ModelError as exc:
        logger.warning("%s; predict routes answer 503 until a model exists", exc)
    return state


JOB_QUEUES = (keys.QUEUE_BULK, keys.QUEUE_WORK)
