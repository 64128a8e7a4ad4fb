"""Is this Redis fit to hold a queue: may it evict keys, and how full is it?

Nothing accepted may be evicted. Under a ``volatile-*`` policy a full Redis evicts keys that have a TTL
first: jobs, their input rows and results (all expire). Under ``allkeys-*`` it evicts anything: queue
lists, the unacked hash. Only ``noeviction`` keeps what was accepted; a full Redis then refuses writes
instead (acks and requeues included), so the API sheds new work by bytes well before that
(``INFERPOOL_REDIS_MEMORY_SHED_SHARE`` of ``maxmemory``, see ``api.state``).

API and workers check the policy when they start and refuse to run under an evicting one unless
``INFERPOOL_ALLOW_EVICTION=true``; the API also re-reads it with every queue snapshot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from inferpool.errors import InferpoolError

logger = logging.getLogger(__name__)

EVICTING_POLICY_PREFIXES = ("allkeys-", "volatile-")


class EvictionPolicyRefused(InferpoolError):
    """Raised when Redis's maxmemory-policy may evict keys and INFERPOOL_ALLOW_EVICTION is not set."""


@dataclass(frozen=True)
class Memory:
    """From ``INFO memory``: bytes in use, the ``maxmemory`` limit (0: none) and the eviction policy."""

    used_bytes: int
    max_bytes: int
    policy: str

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Memory:
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        return cls(used, limit, str(info.get("maxmemory_policy", "")))

    def over(self, share: float, incoming_bytes: int = 0) -> bool:
        """Whether ``incoming_bytes`` more would take Redis past ``share`` of its maxmemory (never, without one)."""
        return bool(self.max_bytes) and self.used_bytes + incoming_bytes > share * self.max_bytes


def eviction_refusal(policy: str, allow: bool) -> str | None:
    """Why inferpool will not run under ``policy``, or None when it may."""
    if allow or not policy.startswith(EVICTING_POLICY_PREFIXES):
        return None
    return (
        f"Redis maxmemory-policy is {policy!r}: a full Redis would evict "
        f"{'any key, queued messages included' if policy.startswith('allkeys-') else 'jobs, inputs and results'}. "
        "Set maxmemory-policy to noeviction (CONFIG SET maxmemory-policy noeviction, or in redis.conf), "
        "or INFERPOOL_ALLOW_EVICTION=true to run anyway"
    )


def check_policy(client: redis.Redis, allow: bool) -> Memory | None:
    """Raise :class:`EvictionPolicyRefused` under an evicting policy; the memory figures, or None when Redis
    does not let this client read them (an ACL without INFO). Connection errors are the caller's."""
    try:
        memory = Memory.from_info(client.info("memory"))
    except redis.exceptions.ResponseError as exc:
        logger.warning("cannot read Redis's maxmemory-policy (%s); not checked", exc)
        return None
    refusal = eviction_refusal(memory.policy, allow)
    if refusal:
        raise EvictionPolicyRefused(refusal)
    return memory
