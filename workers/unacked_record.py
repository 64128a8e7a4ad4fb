"""kombu's unacked record, written once per ``RECORD_FLUSH_S`` rather than twice per message.

A worker that keeps the record (the work worker: ``workers.delivery``) has kombu write each message it
takes into the ``unacked`` hash and its tag into ``unacked_index`` in one transaction, and delete both in
another at the ack: two synchronous round trips per task in the worker's main process, the first before
the task may start. Under the tutorial mix they were a third of that process's CPU. Here both are queued in
memory and sent as one transaction from the event loop every ``RECORD_FLUSH_S``; a message taken and
acked within one interval never touches the record at all.

What reads the record is unchanged, at most ``RECORD_FLUSH_S`` late: the scaler's held count, the
unacked gauges, kombu's restore after the visibility timeout, and the re-dispatcher, whose second look
(``workers.redispatch.SECOND_LOOK_S``, longer than the interval) finds a message just taken in the hash.
A worker killed before a flush leaves the messages it had just taken in no hash: the re-dispatcher sends
them again from their specs, as for a message popped at the instant Redis stopped. Anything that reads
the record back in this process (a requeue, the restore at shutdown) flushes first.

Outside an event loop (a plain consumer, a test's channel) kombu's own writes run unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

RECORD_FLUSH_S = 0.1


@dataclass
class _Pending:
    taken: dict[str, tuple[str, float]] = field(default_factory=dict)  # tag -> (record, time taken)
    acked: list[str] = field(default_factory=list)
    due: bool = False


def _pending(qos: Any) -> _Pending:
    pending = qos.__dict__.get("_inferpool_pending")
    if pending is None:
        pending = qos.__dict__["_inferpool_pending"] = _Pending()
    return pending


def _loop(qos: Any) -> Any:
    """The worker's event loop (kombu's hub), once the transport has been registered with one."""
    return getattr(qos.channel.connection, "_inferpool_loop", None)


def _schedule(qos: Any, loop: Any) -> None:
    pending = _pending(qos)
    if not pending.due:
        pending.due = True
        loop.call_later(RECORD_FLUSH_S, flush, qos)


def flush(qos: Any) -> None:
    """Send what was taken and acked since the last flush, as one transaction. Never raises: it runs on a
    timer of the worker's event loop, where an error would end the worker."""
    pending = _pending(qos)
    pending.due = False
    taken, acked = pending.taken, pending.acked
    if not taken and not acked:
        return
    pending.taken, pending.acked = {}, []
    try:
        with qos.channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            if taken:
                pipe.zadd(qos.unacked_index_key, {tag: at for tag, (_, at) in taken.items()})
                pipe.hset(qos.unacked_key, mapping={tag: record for tag, (record, _) in taken.items()})
            if acked:
                pipe.zrem(qos.unacked_index_key, *acked)
                pipe.hdel(qos.unacked_key, *acked)
            pipe.execute()
    except Exception as exc:
        # Taken ones in no record come back through the re-dispatcher; acked ones left in it come back after
        # the visibility timeout and finish as counted duplicates. Either way nothing is lost.
        logger.warning(
            "could not write the unacked record (%d taken, %d acked): %s: %s",
            len(taken), len(acked), type(exc).__name__, exc,
        )  # fmt: skip


_kombu_append = kombu_redis.QoS.append
_kombu_restore_unacked = kombu_redis.QoS.restore_unacked


def _append_later(self: Any, message: Any, delivery_tag: str) -> None:
    loop = _loop(self)
    if loop is None:
        return _kombu_append(self, message, delivery_tag)
    delivery = message.delivery_info
    record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
    _pending(self).taken[delivery_tag] = (record, time.time())
    VirtualQoS.append(self, message, delivery_tag)
    _schedule(self, loop)


def ack_later(self: Any, delivery_tag: str, now: Any) -> None:
    """The ack half: ``now`` is kombu's own ack, for when there is no loop to wait for."""
    loop = _loop(self)
    pending = _pending(self)
    if pending.taken.pop(delivery_tag, None) is not None:
        VirtualQoS.ack(self, delivery_tag)  # never recorded: nothing to delete
    elif loop is None:
        now(self, delivery_tag)
    else:
        pending.acked.append(delivery_tag)
        VirtualQoS.ack(self, delivery_tag)
        _schedule(self, loop)


def _restore_unacked_recorded(self: Any, client: Any = None) -> Any:
    flush(self)  # the restore reads each message back from the hash
    return _kombu_restore_unacked(self, client)


_kombu_register = kombu_redis.Transport.register_with_event_loop


def _register_remembering_loop(self: Any, connection: Any, loop: Any) -> Any:
    self._inferpool_loop = loop
    return _kombu_register(self, connection, loop)


kombu_redis.QoS.append = _append_later
kombu_redis.QoS.restore_unacked = _restore_unacked_recorded
kombu_redis.Transport.register_with_event_loop = _register_remembering_loop
