"""What happens to a message once its task has run: Celery's ``Request``, as inferpool needs it, and
which Redis errors are worth waiting for.

A worker that consumes only the short queues (``keys.SHORT_QUEUES``: the online worker) keeps no unacked
record in Redis (kombu's ``ack_emulation`` off). kombu records every message it takes in a transaction
(the whole message into a hash, its tag into a sorted set) and deletes it again in a second one at the
ack: two synchronous round trips per task, the first before the task may start. py-spy put them at over
half of the online worker's main process under the tutorial mix, for tasks that run for well under a
millisecond. What they bought, a message back on its queue when its whole worker dies, the re-dispatcher
already gives from the task's spec, which stays in Redis until the task finishes: its short pass resends a
micro-batch or a chunk that shows no progress for ``INFERPOOL_ONLINE_REDELIVERY_S`` and is on no queue
(``workers.redispatch``). A pool process that dies still has its message put back at once by its parent,
from memory, and a warm shutdown puts back what it had taken and not started.

The other workers (the work worker, ``--role all``) keep the record, written in batches from the event loop
rather than in two transactions per message (``workers.unacked_record``).

``ServingRequest`` runs in the worker's main process (prefork children only run the task body): it
closes the model gate when a pool process reports it cannot serve (``workers.serving``).

When Redis refuses the ack or the requeue itself (under ``maxmemory`` with ``noeviction`` every command
inside MULTI is refused, and kombu acks and requeues in one; a replica after a failover refuses every
write), the message stays in kombu's unacked hash, from which the restore sweep puts it back on its
queue after the visibility timeout; only this process's hold on it is let go. Left to kombu, the
refusal escaped from the event loop (Celery runs acks there, ``call_soon_ack``) as an "Unrecoverable
error" and the whole worker exited.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from billiard.einfo import ExceptionWithTraceback
from celery.signals import celeryd_init
from celery.utils.text import str_to_list
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS

from inferpool import keys
from workers import unacked_record
from workers.serving import CannotServe, gate

logger = logging.getLogger(__name__)

# Redis away or refusing for now, never the input's fault: down or restarting (connection errors, LOADING),
# out of memory under maxmemory (OOM), a replica after a failover (READONLY), a cluster in the middle of a
# change (TRYAGAIN, CLUSTERDOWN, MASTERDOWN).
TRANSIENT_REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
# Error codes redis-py leaves as a plain ResponseError: a script running too long (BUSY), a failed RDB save
# that stops writes (MISCONF), too few replicas for min-replicas-to-write (NOREPLICAS).
TRANSIENT_CODES = frozenset({"BUSY", "MISCONF", "NOREPLICAS", "MASTERDOWN", "LOADING", "READONLY", "OOM", "TRYAGAIN"})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis being away or refusing for now: worth a wait, then a requeue, never a failure."""
    if isinstance(exc, TRANSIENT_REDIS_ERRORS):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).split(" ", 1)[0] in TRANSIENT_CODES


class ServingRequest(Request):
    """The request of every inferpool task."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, CannotServe):
            # Stop taking messages before this one goes back to its queue, so another worker gets it.
            gate.close(str(exc.reason))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class OneEventRequest(ServingRequest):
    """Task events at a third of their cost: only the last one (succeeded, failed, retried, rejected,
    revoked), carrying the name and sizes that ``task-received`` would have carried, so Flower still lists
    the task with its outcome and run time. Each event is a synchronous PUBLISH from the worker's main
    process and a JSON decode in Flower: three per task cost the work worker ~0.6 ms of its main process and
    Flower ~1 ms per task at 36 tasks/s. The task itself says ``send_events=False`` so that Celery's consumer
    sends no ``task-received``; this class sends the rest itself."""

    def send_event(self, type: str, **fields: Any) -> None:
        eventer = self._eventer
        if type == "task-started" or eventer is None or not eventer.enabled:
            return
        eventer.send(type, uuid=self.id, name=self.name, args=self.argsrepr, kwargs=self.kwargsrepr, **fields)


# Task events leave in one message per this long, not one per event loop turn that sent one.
EVENT_FLUSH_S = 0.5


def _flush_events_later(self: Any) -> None:
    """Celery's consumer flushes its buffered task events on the loop's next turn, which under the tutorial mix
    is one PUBLISH per task from the work worker's main process (a sixth of its samples in py-spy). Sent every
    EVENT_FLUSH_S instead, they go as one message of many events (Flower reads both), at most that late."""
    if self.hub is None or getattr(self, "_inferpool_flush_due", False):
        return
    self._inferpool_flush_due = True

    def flush() -> None:
        self._inferpool_flush_due = False
        self._flush_events()

    self.hub.call_later(EVENT_FLUSH_S, flush)


Consumer.on_send_event_buffered = _flush_events_later


# --- Redis refusing an ack or a requeue ----------------------------------------------------------------

_kombu_ack = kombu_redis.QoS.ack
_kombu_reject = kombu_redis.QoS.reject


def _leave_unacked(qos: Any, delivery_tag: str, what: str, exc: Exception) -> None:
    """The message stays unacked in Redis and comes back after the visibility timeout (a copy whose results
    were written then counts as a duplicate); let go of it here as a completed ack would, through the
    in-process half of kombu's ack alone, or each refusal would cost the worker a prefetch slot for good."""
    VirtualQoS.ack(qos, delivery_tag)
    logger.warning(
        "Redis refused the %s of message %s (%s: %s); it returns to its queue after the visibility timeout",
        what, delivery_tag, type(exc).__name__, exc,
    )  # fmt: skip


def _ack_now(self: Any, delivery_tag: str) -> None:
    try:
        _kombu_ack(self, delivery_tag)
    except redis.exceptions.ResponseError as exc:  # connection errors stay kombu's: it reconnects
        _leave_unacked(self, delivery_tag, "ack", exc)


def _ack_or_leave_unacked(self: Any, delivery_tag: str) -> None:
    unacked_record.ack_later(self, delivery_tag, _ack_now)


def _reject_or_leave_unacked(self: Any, delivery_tag: str, requeue: bool = False) -> None:
    unacked_record.flush(self)  # a requeue reads the message back from the record
    try:
        _kombu_reject(self, delivery_tag, requeue=requeue)
    except redis.exceptions.ResponseError as exc:
        _leave_unacked(self, delivery_tag, "requeue" if requeue else "reject", exc)


kombu_redis.QoS.ack = _ack_or_leave_unacked
kombu_redis.QoS.reject = _reject_or_leave_unacked


_virtual_reject = VirtualQoS.reject


def _reject_or_drop(self: Any, delivery_tag: str, requeue: bool = False) -> None:
    """A requeue that Redis refuses, on a worker that keeps no unacked record: the message is let go here and
    the re-dispatcher sends it again from its spec, rather than the refusal ending the worker."""
    try:
        _virtual_reject(self, delivery_tag, requeue=requeue)
    except redis.exceptions.ResponseError as exc:
        VirtualQoS.ack(self, delivery_tag)
        logger.warning(
            "Redis refused the requeue of message %s (%s: %s); the re-dispatcher sends it again",
            delivery_tag, type(exc).__name__, exc,
        )  # fmt: skip


# Only channels without ack emulation use the virtual QoS as it is: kombu's Redis QoS has its own reject.
VirtualQoS.reject = _reject_or_drop


def keeps_unacked_record(queues: list[str]) -> bool:
    """Whether a worker consuming ``queues`` (all of them when empty) has kombu record what it takes in Redis."""
    return not queues or not set(queues) <= keys.SHORT_QUEUES


@celeryd_init.connect
def _short_queues_unrecorded(conf: Any = None, options: dict | None = None, **_: Any) -> None:
    # Before the consumer's connection exists: kombu reads its transport options when it connects.
    queues = str_to_list((options or {}).get("queues") or [])
    if not keeps_unacked_record(queues):
        conf.broker_transport_options = {**conf.broker_transport_options, "ack_emulation": False}
