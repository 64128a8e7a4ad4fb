"""The unacked record written in batches (workers/unacked_record.py), on a real Redis through kombu's own channel.

The event loop is stood in for by its timers alone: the test runs them when a worker's hub would, which
makes "before the flush" and "after the flush" exact instead of a matter of sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from inferpool import keys, publish
from inferpool.celery_config import celery_config
from inferpool.settings import Settings
from workers import (
    delivery,  # noqa: F401  (installs the record's patches, as the worker does)
    unacked_record,
)
from workers.redispatch import SECOND_LOOK_S

DB = 13
QUEUE = "record.test"


class Timers:
    """What the record asks of the hub: call_later."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Any, tuple]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.due.append((delay, fn, args))

    def run(self) -> int:
        due, self.due = self.due, []
        for _, fn, args in due:
            fn(*args)
        return len(due)


@pytest.fixture
def channel(redis_server) -> Iterator[tuple[Any, redis.Redis, Timers]]:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = Celery("record", set_as_current=False)
    app.conf.update(celery_config(Settings(redis_url=url)))
    timers = Timers()
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        ch.connection._inferpool_loop = timers  # what Transport.register_with_event_loop records
        yield ch, client, timers
    app.close()
    client.flushdb()
    client.close()


def take(ch: Any, client: redis.Redis, task_id: str) -> Any:
    client.lpush(QUEUE, publish.task_message(task_id, {"id": task_id, "n": 1, "work_ms": 0, "queue": QUEUE}, QUEUE))
    message = ch.basic_get(QUEUE, no_ack=False)
    assert message is not None and message.headers["id"] == task_id
    return message


def recorded(client: redis.Redis) -> set[str]:
    return {json.loads(v)[0]["properties"]["correlation_id"] for v in client.hvals(keys.UNACKED_HASH)}


def test_taken_messages_are_recorded_at_the_flush_and_deleted_at_the_next(channel):
    ch, client, timers = channel
    a, b = take(ch, client, "t-a"), take(ch, client, "t-b")
    assert recorded(client) == set()  # nothing written yet: the task may start without a round trip
    assert timers.run() == 1  # one flush for both
    assert recorded(client) == {"t-a", "t-b"} and client.zcard(keys.UNACKED_INDEX) == 2
    raw, exchange, routing_key = json.loads(client.hget(keys.UNACKED_HASH, a.delivery_tag))
    assert (exchange, routing_key) == ("", QUEUE)  # kombu's own layout, which its restore reads back

    ch.basic_ack(a.delivery_tag)
    assert recorded(client) == {"t-a", "t-b"}  # until the next flush
    timers.run()
    assert recorded(client) == {"t-b"} and client.zcard(keys.UNACKED_INDEX) == 1
    ch.basic_ack(b.delivery_tag)
    timers.run()
    assert client.hlen(keys.UNACKED_HASH) == 0 and client.zcard(keys.UNACKED_INDEX) == 0


def test_a_message_acked_before_the_flush_never_touches_redis(channel):
    ch, client, timers = channel
    message = take(ch, client, "t-quick")
    client.config_resetstat()
    ch.basic_ack(message.delivery_tag)
    timers.run()
    stats = client.info("commandstats")
    assert not any(f"cmdstat_{c}" in stats for c in ("hset", "zadd", "hdel", "zrem", "multi"))
    assert client.hlen(keys.UNACKED_HASH) == 0


def test_a_requeue_before_the_flush_puts_the_message_back(channel):
    ch, client, timers = channel
    message = take(ch, client, "t-requeued")
    ch.basic_reject(message.delivery_tag, requeue=True)  # a pool process lost: its parent requeues
    assert client.llen(QUEUE) == 1 and json.loads(client.lindex(QUEUE, 0))["headers"]["id"] == "t-requeued"
    assert client.hlen(keys.UNACKED_HASH) == 0
    timers.run()  # the flush left over from the take finds nothing more to do
    assert client.hlen(keys.UNACKED_HASH) == 0 and client.llen(QUEUE) == 1


def test_the_restore_at_shutdown_puts_back_what_was_not_flushed(channel):
    ch, client, timers = channel
    take(ch, client, "t-held")
    ch.qos.restore_unacked_once()  # what a warm shutdown runs
    assert client.llen(QUEUE) == 1 and json.loads(client.lindex(QUEUE, 0))["headers"]["id"] == "t-held"
    assert client.hlen(keys.UNACKED_HASH) == 0


def test_the_record_is_written_before_the_re_dispatcher_looks_a_second_time():
    # A message just taken is in no list and not yet in the hash; the second look must find it recorded.
    assert unacked_record.RECORD_FLUSH_S < SECOND_LOOK_S


def test_without_an_event_loop_kombu_writes_at_once(channel):
    ch, client, timers = channel
    ch.connection._inferpool_loop = None
    message = take(ch, client, "t-direct")
    assert recorded(client) == {"t-direct"} and not timers.due
    ch.basic_ack(message.delivery_tag)
    assert client.hlen(keys.UNACKED_HASH) == 0
