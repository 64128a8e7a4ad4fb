"""Audit records: who submitted which job (by key id), when, on which model, how many rows, and its outcome.

Kept for ``INFERPOOL_AUDIT_TTL_S`` (default a week), longer than the job's results;
the outcome is read from the job when it still exists.
"""

from __future__ import annotations

import time

from inferpool import keys
from inferpool.records import JobField


async def record(aclient, job_id: str, key_id: str, model_version: str, rows: int, ttl_s: int) -> None:
    now = time.time()
    pipe = aclient.pipeline(transaction=False)
    pipe.hset(
        keys.audit(job_id),
        mapping={"job_id": job_id, "key_id": key_id, "submitted": now, "model_version": model_version, "rows": rows},
    )
    pipe.expire(keys.audit(job_id), ttl_s)
    pipe.zadd(keys.AUDIT_INDEX, {job_id: now})
    pipe.zremrangebyscore(keys.AUDIT_INDEX, 0, now - ttl_s)
    await pipe.execute()


async def query(aclient, since: float, until: float, limit: int = 100) -> list[dict]:
    """Audit records submitted in [since, until], newest first, with each job's outcome where known."""
    ids = await aclient.zrevrangebyscore(keys.AUDIT_INDEX, until, since, start=0, num=limit)
    out = []
    for raw_id in ids:
        job_id = raw_id.decode()
        rec = await aclient.hgetall(keys.audit(job_id))
        if not rec:
            continue
        status = await aclient.hget(keys.job(job_id), JobField.status)
        d = {k.decode(): v.decode() for k, v in rec.items()}
        d["outcome"] = status.decode() if status else "expired"
        d["rows"] = int(d["rows"])
        d["submitted"] = float(d["submitted"])
        out.append(d)
    return out
