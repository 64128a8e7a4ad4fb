"""Jobs: rows stored once in Redis as float32 chunks, one small task per chunk, results read back in order."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.dispatch import Dispatcher
from api.schemas import JobView, Progress, Timings
from inferpool import codec, keys
from inferpool.errors import JobNotFound
from inferpool.records import (
    JobField,
    JobRecord,
    JobStatus,
    chunk_rows,
    chunk_spec,
    decode_reply,
    inflight_job,
    new_job,
)
from inferpool.scripts import AcceptJob

# Hex digits of the tag that makes a slice id unguessable: 128 bits.
SLICE_TAG_HEX = 32
# Rows staged while a body still arrives keep at least this long: an upload may take minutes, and a job never
# committed (its submit failed part way) is cleaned up by this TTL.
STAGE_TTL_MIN_S = 600


@dataclass(frozen=True)
class JobAnswer:
    """A job's view and, once it has succeeded, its predictions in input order as one array.

    The array goes to orjson as it is: a 200,000-row job's labels through pydantic (a list of ints validated,
    then dumped) took 17 ms of the API's event loop against 1.6 ms this way.
    """

    view: JobView
    predictions: np.ndarray | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body of ``GET /v1/jobs/{id}`` (schema: ``JobView``)."""
        out = self.view.model_dump()
        out["predictions"] = self.predictions
        return out


class JobStore:
    def __init__(
        self, aredis, dispatcher: Dispatcher, chunk_rows: int, ttl_s: int, id_secret: str | None = None
    ) -> None:
        self.redis = aredis
        self._accept = AcceptJob.register(aredis)
        self.dispatcher = dispatcher
        self.chunk_rows = chunk_rows
        self.ttl_s = ttl_s
        self.stage_ttl_s = max(ttl_s, STAGE_TTL_MIN_S)
        self._id_secret = id_secret.encode() if id_secret else None

    # --- slices of micro-batches ------------------------------------------------
    async def _secret(self) -> bytes:
        if self._id_secret is None:
            await self.redis.set(keys.JOB_ID_SECRET, secrets.token_hex(32), nx=True)
            self._id_secret = await self.redis.get(keys.JOB_ID_SECRET)
        return self._id_secret

    def _tag(self, secret: bytes, raw: str, key_id: str) -> str:
        return hmac.new(secret, f"{raw}|{key_id}".encode(), hashlib.sha256).hexdigest()[:SLICE_TAG_HEX]

    async def slice_id(self, raw: str, key_id: str) -> str:
        """The job id of a caller's slice of a micro-batch: ``task.offset.count.tag``.

        The tag (an HMAC of the rest and the caller's key id) keeps a caller from reading other slices of
        the same batch by changing offset or count, or anyone else's slice with another key.
        """
        return f"{raw}.{self._tag(await self._secret(), raw, key_id)}"

    @staticmethod
    def new_id() -> str:
        # 160 random bits from the OS CSPRNG: job ids are bearer tokens for their results.
        return secrets.token_hex(20)

    async def stage(self, job_id: str, chunk: int, rows: np.ndarray) -> None:
        """Store one chunk of a job's rows while its body is still arriving (before ``commit``)."""
        await self.redis.set(keys.job_input(job_id, chunk), codec.rows_to_bytes(rows), ex=self.stage_ttl_s)

    async def discard(self, job_id: str, n_chunks: int) -> None:
        """Drop the chunks staged for a job that will not be committed (its body broke a rule)."""
        if n_chunks:
            await self.redis.delete(*(keys.job_input(job_id, k) for k in range(n_chunks)))

    async def commit(
        self, job_id: str, n_rows: int, n_chunks: int, work_ms: int, model_version: str, key_id: str
    ) -> None:
        """Record a job whose chunks are all staged, publish its chunks, then accept it.

        If Redis fails part way the caller gets the error (503) and the job is not accepted; a retry
        with the same Idempotency-Key finishes it (see ``resume``).
        """
        pipe = self.redis.pipeline(transaction=True)
        record = new_job(n_rows, n_chunks, self.chunk_rows, work_ms, model_version, key_id, time.time())
        pipe.hset(keys.job(job_id), mapping=record)
        pipe.expire(keys.job(job_id), self.ttl_s)
        await pipe.execute()
        await self._publish_and_accept(job_id, n_rows, n_chunks, work_ms, model_version)

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(keys.job(job_id)))

    async def resume(self, job_id: str) -> bool:
        """Finish accepting a job stored by an earlier request that failed part way; False if none is stored.

        Its chunks are published again: any that already ran run twice and count as duplicates.
        """
        n, n_chunks, work_ms, accepted, version = await self.redis.hmget(
            keys.job(job_id),
            [JobField.n_rows, JobField.n_chunks, JobField.work_ms, JobField.accepted, JobField.model_version],
        )
        if n is None:
            return False
        if accepted is None:
            mv = version.decode() if version else None
            await self._publish_and_accept(job_id, int(n), int(n_chunks), int(work_ms), mv)
        return True

    async def _publish_and_accept(
        self, job_id: str, n: int, n_chunks: int, work_ms: int, model_version: str | None
    ) -> None:
        n_rows = [chunk_rows(n, self.chunk_rows, k) for k in range(n_chunks)]
        specs = [chunk_spec(job_id, k, rows, work_ms, model_version) for k, rows in enumerate(n_rows)]
        tasks = [(keys.chunk_task_id(job_id, k), spec) for k, spec in enumerate(specs)]
        await self.dispatcher.publish_many(tasks, specs[0]["queue"])
        accepted = await self._accept(
            keys=[keys.job(job_id), keys.LEDGER, keys.INFLIGHT], args=[time.time(), inflight_job(job_id)]
        )
        if accepted == -1:
            raise JobNotFound(f"job {job_id!r} expired before it was accepted (INFERPOOL_RESULT_TTL_S too short?)")

    async def get(self, job_id: str, with_predictions: bool = True, key_id: str | None = None) -> JobAnswer:
        """The job's view and predictions, for the key that submitted it (any key when ``key_id`` is None).

        Another key's job reads as unknown: whether a job id exists is not for others to learn.
        """
        if "." in job_id:
            return await self._get_inline(job_id, key_id)
        h = await self.redis.hgetall(keys.job(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its results expired)")
        job = JobRecord.decode(h)
        if job is not None and key_id is not None and job.key_id not in (None, key_id):
            raise JobNotFound(f"no job {job_id!r} (unknown, or its results expired)")
        if job is None:
            # A hash rebuilt by a late counter update after the job expired: treat it as expired.
            raise JobNotFound(f"no job {job_id!r} (unknown, or its results expired)")
        status, submitted, started, finished = job.status, job.submitted, job.started, job.finished
        preds = None
        if status is JobStatus.succeeded and with_predictions:
            blobs = await self.redis.mget([keys.job_output(job_id, k) for k in range(job.n_chunks)])
            if any(b is None for b in blobs):
                raise JobNotFound(f"results of job {job_id!r} have expired")
            preds = np.concatenate([codec.preds_from_bytes(b) for b in blobs])
        view = JobView(
            job_id=job_id,
            status=status,
            progress=Progress(rows_done=job.rows_done, rows_total=job.n_rows),
            model_version=job.model_version,
            timings=Timings(
                submitted=submitted,
                started=started,
                finished=finished,
                queue_wait_s=(started - submitted) if started and submitted else None,
                run_s=(finished - started) if finished and started else None,
            ),  # fmt: skip
            error=job.error,
        )
        return JobAnswer(view, preds)

    async def _get_inline(self, job_id: str, key_id: str | None) -> JobAnswer:
        """Ids of the form ``task.offset.count.tag`` name a caller's slice of a micro-batch."""
        try:
            task_id, offset_s, count_s, tag = job_id.split(".")
            offset, count = int(offset_s), int(count_s)
        except ValueError as exc:
            raise JobNotFound(f"no job {job_id!r}") from exc
        if key_id is not None:
            expected = self._tag(await self._secret(), f"{task_id}.{offset_s}.{count_s}", key_id)
            if not hmac.compare_digest(tag.encode(), expected.encode()):
                raise JobNotFound(f"no job {job_id!r} (unknown, or its results expired)")
        raw, pending = await self.redis.mget([keys.batch_result(task_id), keys.batch_pending(task_id)])
        if raw is None:
            if pending is None:
                raise JobNotFound(f"no job {job_id!r} (unknown, or its results expired)")
            return JobAnswer(JobView(
                job_id=job_id, status=JobStatus.queued, progress=Progress(rows_done=0, rows_total=count),
                timings=Timings(submitted=float(pending)),
            ))  # fmt: skip
        reply = decode_reply(raw)
        if reply.error is not None or reply.predictions is None:
            return JobAnswer(JobView(
                job_id=job_id, status=JobStatus.failed, progress=Progress(rows_done=0, rows_total=count),
                timings=Timings(), error=reply.error,
            ))  # fmt: skip
        view = JobView(
            job_id=job_id,
            status=JobStatus.succeeded,
            progress=Progress(rows_done=count, rows_total=count),
            model_version=reply.model_version,
            timings=Timings(
                submitted=reply.enqueued,
                started=reply.started,
                finished=reply.finished,
                queue_wait_s=reply.started - reply.enqueued,
                run_s=reply.finished - reply.started,
            ),  # fmt: skip
        )
        return JobAnswer(view, reply.predictions[offset : offset + count])
