"""``Idempotency-Key`` on ``POST /v1/jobs``, as the IETF draft describes it: one job per (API key, key).

The first request claims the key in Redis with ``SET NX`` before reading its body; the claim names the job
it will create and is held (a lease, renewed while the request runs) until the job is accepted, then turns
into a record of the job and the digest of its body. Meanwhile:

* another request with the key gets 409 (the first is still being accepted): nothing of its body is read;
* after acceptance, a request with the same body gets the same job (200), one with another body 422;
* a first request that fails releases the key (retry at will), except when it failed after the job was
  stored: then the claim records the job, and a retry finishes accepting it (``JobStore.resume``);
* a process that dies mid-request leaves the lease to run out (``LEASE_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum

from inferpool import keys
from inferpool.errors import InputError
from inferpool.scripts import ClaimDrop, ClaimRenew, ClaimSwap

logger = logging.getLogger(__name__)

LEASE_S = 30.0
MAX_KEY_CHARS = 200


class ClaimState(Enum):
    NEW = "new"  # this request holds the key: it creates the job
    PENDING = "pending"  # another request holds it and is still accepting its job
    DONE = "done"  # the key's job was accepted (or stored, by a request that then failed)


@dataclass
class Claim:
    redis_key: str
    job_id: str
    state: ClaimState
    value: str  # as stored: the claim is changed only while it still holds this
    digest: str | None = None  # of the body that made the job (DONE)


def _parse(redis_key: str, raw: str) -> Claim:
    kind, _, rest = raw.partition(" ")
    if kind == "pending":
        return Claim(redis_key, rest, ClaimState.PENDING, raw)
    if kind == "done":
        job_id, _, digest = rest.partition(" ")
        return Claim(redis_key, job_id, ClaimState.DONE, raw, digest or None)
    return Claim(redis_key, raw, ClaimState.DONE, raw)  # written before digests were kept: any body matches


class Claims:
    def __init__(self, aredis, ttl_s: int, lease_s: float = LEASE_S) -> None:
        self.redis = aredis
        self.ttl_s = ttl_s
        self.lease_ms = int(lease_s * 1000)
        self._swap = ClaimSwap.register(aredis)
        self._renew = ClaimRenew.register(aredis)
        self._drop = ClaimDrop.register(aredis)

    async def take(self, key_id: str, idem: str, job_id: str) -> Claim:
        """Claim the key for ``job_id``, or report who holds it."""
        if len(idem) > MAX_KEY_CHARS:
            raise InputError("Idempotency-Key", f"at most {MAX_KEY_CHARS} characters")
        redis_key = keys.idempotency(key_id, idem)
        value = f"pending {job_id}"
        for _ in range(3):  # the holder's claim may vanish between SET NX and GET
            if await self.redis.set(redis_key, value, nx=True, px=self.lease_ms):
                return Claim(redis_key, job_id, ClaimState.NEW, value)
            raw = await self.redis.get(redis_key)
            if raw is not None:
                return _parse(redis_key, raw.decode())
        raise RuntimeError(f"idempotency key {redis_key!r} neither claimed nor held")

    async def done(self, claim: Claim, digest: str) -> None:
        """Record the job and its body's digest, for later requests with the key."""
        value = f"done {claim.job_id} {digest}"
        if await self._swap(keys=[claim.redis_key], args=[claim.value, value, self.ttl_s * 1000]):
            claim.value, claim.state, claim.digest = value, ClaimState.DONE, digest
        else:
            logger.warning("idempotency claim %s lapsed before its job was recorded", claim.job_id)

    async def release(self, claim: Claim) -> None:
        """Give the key back (this request made no job); a claim no longer ours is left alone."""
        await self._drop(keys=[claim.redis_key], args=[claim.value])

    @contextlib.asynccontextmanager
    async def held(self, claim: Claim) -> AsyncIterator[None]:
        """Renew the lease while the body is read and the job stored (an upload may take minutes)."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_ms / 3000)
                with contextlib.suppress(Exception):  # Redis away: the lease may lapse, the key is freed
                    await self._renew(keys=[claim.redis_key], args=[claim.value, self.lease_ms])

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
