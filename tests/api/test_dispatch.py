"""The API's reply path (api/dispatch.py) against a real Redis: a reply published to the subscription, and
one the subscription missed, read back from its result key."""

from __future__ import annotations

import asyncio

import numpy as np
import redis

from api.dispatch import RECOVER_AFTER_S, Dispatcher
from inferpool import keys
from inferpool.records import encode_reply

QUEUE = "dispatch.test"  # no worker consumes it: the test answers in the worker's place


async def _subscribed(client: redis.Redis, channel: str) -> None:
    for _ in range(200):
        if client.pubsub_numsub(channel)[0][1]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reader never subscribed")


def _answer(client: redis.Redis, task_id: str, prediction: int, channel: str | None) -> None:
    """What the worker's finishing script does, with or without anyone hearing the publish."""
    payload = encode_reply(task_id, [prediction], "v1", 0.0, 0.0, 0.0)
    client.set(keys.batch_result(task_id), payload, ex=60)
    if channel:
        client.publish(channel, payload)


def test_replies_arrive_by_the_subscription_and_missed_ones_from_their_result_keys(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    async def run() -> None:
        d = Dispatcher(redis_server.url, result_ttl_s=60)
        d.start()
        try:
            await _subscribed(client, d.reply_channel)
            heard_id, heard = await d.publish_rows(np.zeros((1, 3)), 0, QUEUE, reqs=0)
            missed_id, missed = await d.publish_rows(np.zeros((1, 3)), 0, QUEUE, reqs=0)
            assert client.llen(QUEUE) == 2
            _answer(client, heard_id, 1, d.reply_channel)
            reply = await asyncio.wait_for(heard, 1.0)
            assert reply.task_id == heard_id and reply.predictions.tolist() == [1]

            _answer(client, missed_id, 2, None)  # published while the subscription was down: heard by no one
            await asyncio.sleep(0.2)
            assert not missed.done()
            reply = await asyncio.wait_for(missed, RECOVER_AFTER_S * 3)
            assert reply.task_id == missed_id and reply.predictions.tolist() == [2]
            assert not d._waiting and not d._since
        finally:
            await d.close()

    try:
        asyncio.run(run())
    finally:
        client.delete(QUEUE)
        client.close()
