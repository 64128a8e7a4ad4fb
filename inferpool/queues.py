"""Read the state of inferpool's queues straight from Redis, without consuming anything.

kombu's Redis transport LPUSHes and BRPOPs, so a queue's oldest message sits
at index -1 of each priority sub-list; a message taken by a worker but not yet
acked lives in the ``unacked`` hash, scored by delivery time in ``unacked_index``.
The same round trip reads ``INFO memory``: how full Redis is, for shedding by bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from inferpool import keys
from inferpool.redis_fit import Memory


@dataclass(frozen=True)
class QueueState:
    depth: int
    oldest_age_s: float


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    queues: dict[str, QueueState]
    unacked: int
    unacked_oldest_age_s: float
    redelivered: int = 0
    extra: dict = field(default_factory=dict)
    memory: Memory | None = None  # None when Redis would not say (an ACL without INFO)

    @property
    def depth(self) -> int:
        return sum(q.depth for q in self.queues.values())

    @property
    def oldest_age_s(self) -> float:
        return max((q.oldest_age_s for q in self.queues.values()), default=0.0)


def enqueued_at(raw: bytes | None) -> float | None:
    """The publish timestamp inferpool stamps into a message's headers, if any."""
    if not raw:
        return None
    try:
        msg = orjson.loads(raw)
        value = msg.get("headers", {}).get(keys.ENQUEUED_HEADER)
        return float(value) if value is not None else None
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def _plan(queues: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(q, lst) for q in queues for lst in keys.priority_lists(q)]


def _build(queues: tuple[str, ...], res: list, now: float) -> Snapshot:
    replies, oldest_unacked, n_unacked, info = res[:-3], res[-3], res[-2], res[-1]
    plan = _plan(queues)
    depth: dict[str, int] = dict.fromkeys(queues, 0)
    oldest: dict[str, float] = dict.fromkeys(queues, 0.0)
    for (q, _), length, tail in zip(plan, replies[0::2], replies[1::2], strict=True):
        depth[q] += int(length)
        ts = enqueued_at(tail[0] if tail else None)
        if ts is not None:
            oldest[q] = max(oldest[q], now - ts)
    unacked_age = now - float(oldest_unacked[0][1]) if oldest_unacked else 0.0
    return Snapshot(
        taken_at=now,
        queues={q: QueueState(depth[q], oldest[q]) for q in queues},
        unacked=int(n_unacked),
        unacked_oldest_age_s=max(0.0, unacked_age),
        memory=Memory.from_info(info) if isinstance(info, dict) else None,
    )


def _queue_commands(pipe, queues: tuple[str, ...]) -> None:
    for _, lst in _plan(queues):
        pipe.llen(lst)
        pipe.lrange(lst, -1, -1)
    pipe.zrange(keys.UNACKED_INDEX, 0, 0, withscores=True)
    pipe.zcard(keys.UNACKED_INDEX)
    pipe.info("memory")


def snapshot(client, queues: tuple[str, ...] = keys.ALL_QUEUES) -> Snapshot:
    """One round trip to Redis: depth and oldest age per queue, the unacked set, and memory."""
    pipe = client.pipeline(transaction=False)
    _queue_commands(pipe, queues)
    return _build(queues, _checked_replies(pipe.execute(raise_on_error=False)), time.time())


async def asnapshot(aclient, queues: tuple[str, ...] = keys.ALL_QUEUES) -> Snapshot:
    pipe = aclient.pipeline(transaction=False)
    _queue_commands(pipe, queues)
    return _build(queues, _checked_replies(await pipe.execute(raise_on_error=False)), time.time())


def _checked_replies(res: list) -> list:
    """A refused INFO (an ACL without it) costs only the memory figures; any other error is the caller's."""
    for r in res[:-1]:
        if isinstance(r, Exception):
            raise r
    return res
