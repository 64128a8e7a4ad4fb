"""The re-dispatcher: work whose message is lost outright (on no queue, held by no worker) is sent again,
and work whose message is merely waiting or running never is.

Real parts throughout: a redis-server, Celery workers and the API. Losing a message is simulated by
deleting the queue lists, which is what kombu's BRPOP window does to one message when Redis stops.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
import pytest
import redis

from inferpool import keys
from inferpool.publish import send_predict
from inferpool.records import inflight_batch, inline_spec
from inferpool.settings import Settings
from tests.support.jobs import wait_job
from tests.support.waiting import wait_until
from workers.redispatch import find_messages, restore_held, sweep_short

N_FEATURES = 20
STALL_S = 8  # the visibility timeout: how long work may show no progress before it is looked at
FAST = {
    "INFERPOOL_VISIBILITY_TIMEOUT_S": str(STALL_S),
    "INFERPOOL_TASK_TIME_LIMIT_S": "7",
    "INFERPOOL_REDISPATCH_INTERVAL_S": "1",
    "INFERPOOL_JOB_CHUNK_ROWS": "100",
    "INFERPOOL_PREDICT_TIMEOUT_S": "1",
}


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def queued(client, queue: str) -> int:
    return sum(client.llen(lst) for lst in keys.priority_lists(queue))


def ledger(client) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.LEDGER).items()}


def test_find_messages_sees_a_queued_message_and_nothing_else(fresh_redis):
    spec = {"id": "t-queued", "n": 0, "work_ms": 0, "queue": keys.QUEUE_BULK}
    client = redis.Redis.from_url(fresh_redis.url)
    send_predict(client, "t-queued", spec, keys.QUEUE_BULK)
    assert find_messages(client, ["t-queued", "t-lost"]) == {"t-queued"}
    client.delete(*keys.priority_lists(keys.QUEUE_BULK))
    assert find_messages(client, ["t-queued"]) == set()


def _take_without_ack(conn, queue: str):
    """What a worker does with a message before it dies: kombu takes it and records it as unacked."""
    message = conn.default_channel.basic_get(queue, no_ack=False)
    assert message is not None, f"nothing on {queue}"
    return message


def test_messages_a_dead_worker_held_go_back_to_their_queue_once(fresh_redis):
    """Online and bulk messages held past INFERPOOL_ONLINE_REDELIVERY_S go back (flagged redelivered, to be
    taken next); a work message, a recent one and an acked one stay where they are."""
    from kombu import Connection

    client = redis.Redis.from_url(fresh_redis.url)
    for task_id, queue in (("t-online", keys.QUEUE_ONLINE), ("t-bulk", keys.QUEUE_BULK), ("t-work", keys.QUEUE_WORK)):
        send_predict(client, task_id, {"id": task_id, "n": 0, "work_ms": 0, "queue": queue}, queue)
    with Connection(fresh_redis.url) as conn:
        held = {q: _take_without_ack(conn, q) for q in (keys.QUEUE_ONLINE, keys.QUEUE_BULK, keys.QUEUE_WORK)}
        assert client.hlen(keys.UNACKED_HASH) == 3 and queued(client, keys.QUEUE_ONLINE) == 0
        now = time.time()

        assert restore_held(client, now, 5.0) == 0  # taken just now: a live worker is running them
        assert restore_held(client, now + 6, 5.0) == 2  # the online and bulk ones; the work queue waits for kombu
        assert restore_held(client, now + 6, 5.0) == 0  # once only

        for queue, task_id in ((keys.QUEUE_ONLINE, "t-online"), (keys.QUEUE_BULK, "t-bulk")):
            back = orjson.loads(client.lindex(queue, -1))  # at the end BRPOP takes from: it runs next
            assert back["properties"]["correlation_id"] == task_id
            assert back["headers"]["redelivered"] and back["properties"]["delivery_info"]["redelivered"]
        assert client.hlen(keys.UNACKED_HASH) == 1 and client.zcard(keys.UNACKED_INDEX) == 1
        assert orjson.loads(client.hvals(keys.UNACKED_HASH)[0])[2] == keys.QUEUE_WORK

        # A worker that acks before the sweep reads its entry keeps its message: nothing is pushed twice.
        again = _take_without_ack(conn, keys.QUEUE_ONLINE)
        again.ack()
        assert restore_held(client, time.time() + 6, 5.0) == 0
        assert queued(client, keys.QUEUE_ONLINE) == 0
        held[keys.QUEUE_WORK].ack()


def test_the_short_pass_resends_a_lost_micro_batch_within_seconds_and_leaves_work_to_the_long_pass(fresh_redis):
    """A micro-batch on no queue and in no hash (its online worker, which keeps no unacked record, died) is sent
    again once it has shown no progress for INFERPOOL_ONLINE_REDELIVERY_S; a newer one, one still queued and a
    work-queue task wait (the last for the visibility timeout)."""
    client = redis.Redis.from_url(fresh_redis.url)
    s = Settings(redis_url=fresh_redis.url, online_redelivery_s=5, visibility_timeout_s=60)
    now = time.time()
    ages = {"lost-online": 6, "lost-work": 6, "recent-online": 2, "queued-online": 6, "old-online": 61}
    for task_id, age in ages.items():
        queue = keys.QUEUE_WORK if task_id == "lost-work" else keys.QUEUE_ONLINE
        spec = {**inline_spec(task_id, 0, keys.reply_list("api"), queue, 1), "n": 0}
        client.set(keys.batch_spec(task_id), orjson.dumps(spec))
        client.zadd(keys.INFLIGHT, {inflight_batch(task_id): now - age})
    send_predict(client, "queued-online", orjson.loads(client.get(keys.batch_spec("queued-online"))), keys.QUEUE_ONLINE)

    report = sweep_short(client, s, now)
    assert (report.resent, report.alive) == (1, 1)
    assert queued(client, keys.QUEUE_ONLINE) == 2 and queued(client, keys.QUEUE_WORK) == 0
    resent = [orjson.loads(m)["properties"]["correlation_id"] for m in client.lrange(keys.QUEUE_ONLINE, 0, -1)]
    assert sorted(resent) == ["lost-online", "queued-online"]
    assert ledger(client)["redispatched"] == 1
    # The work-queue task and the one past a visibility timeout are the long pass's: their clocks are untouched.
    assert client.zscore(keys.INFLIGHT, inflight_batch("lost-work")) == pytest.approx(now - 6)
    assert client.zscore(keys.INFLIGHT, inflight_batch("old-online")) == pytest.approx(now - 61)
    # A resent batch's clock starts again: the next pass leaves it to its new message.
    assert sweep_short(client, s, now + 1).resent == 0
    later = sweep_short(client, s, now + 6)  # the recent one has stalled by now; the resent one is queued
    assert (later.resent, later.alive) == (1, 2)
    assert queued(client, keys.QUEUE_ONLINE) == 3 and ledger(client)["redispatched"] == 2


@pytest.mark.slow  # a kill-and-recover run of 20-30 s: `make test-long`
@pytest.mark.timeout(120)
def test_lost_messages_are_sent_again_and_waiting_ones_are_not(stack_factory, reference_model):
    st = stack_factory(**FAST)
    client = st.client
    # Only the work queue has a consumer (and with it, a re-dispatcher): bulk and online messages wait.
    st.start_worker("work", concurrency=1, name="work@redispatch")
    c = httpx.Client(base_url=st.start_api(), timeout=30)

    X = rows(300, seed=1)  # a job of 3 chunks on the bulk queue
    job = c.post("/v1/jobs", json={"instances": X.tolist()})
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    one = rows(1, seed=2)
    timed_out = c.post("/v1/predict", json={"instances": one.tolist()})
    assert timed_out.status_code == 504, timed_out.text  # no online worker: the caller polls its job id instead
    poll_id = timed_out.json()["job_id"]
    wait_until(lambda: client.zcard(keys.INFLIGHT) == 2, 5, "the job and the inline task are in flight")

    # Waiting past the stall time on a queue is not lost: nothing is sent twice.
    time.sleep(STALL_S + 3)
    assert queued(client, keys.QUEUE_BULK) == 3 and queued(client, keys.QUEUE_ONLINE) == 1
    assert ledger(client).get("redispatched", 0) == 0

    # A running task holds its message in the unacked hash, where it is found too.
    heavy = c.post("/v1/jobs", json={"instances": rows(1, seed=3).tolist(), "work_ms": 3000}).json()["job_id"]
    wait_until(lambda: client.hlen(keys.UNACKED_HASH) == 1, 10, "the work worker holds the heavy chunk")
    held = orjson.loads(next(iter(client.hvals(keys.UNACKED_HASH))))[0]["properties"]["correlation_id"]
    assert held == keys.chunk_task_id(heavy, 0)
    assert find_messages(client, [held]) == {held}

    # The messages vanish (as in kombu's BRPOP window when Redis stops): all four come back.
    client.delete(*[lst for q in (keys.QUEUE_BULK, keys.QUEUE_ONLINE) for lst in keys.priority_lists(q)])
    wait_until(
        lambda: queued(client, keys.QUEUE_BULK) == 3 and queued(client, keys.QUEUE_ONLINE) == 1,
        STALL_S + 10,
        "the lost chunk and task were published again",
    )
    assert ledger(client)["redispatched"] == 4

    st.start_worker("online", concurrency=2, name="online@redispatch")
    view = wait_job(c, job_id, timeout_s=30)
    assert view["status"] == "succeeded" and view["predictions"] == reference_model.predict(X).tolist()
    polled = wait_job(c, poll_id, timeout_s=30)
    assert polled["status"] == "succeeded" and polled["predictions"] == reference_model.predict(one).tolist()
    assert wait_job(c, heavy, timeout_s=30)["status"] == "succeeded"

    led = ledger(client)
    assert led["accepted"] == 3 and led["succeeded"] == 3 and led.get("duplicates", 0) == 0, led
    wait_until(lambda: client.zcard(keys.INFLIGHT) == 0, 5, "finished work leaves the in-flight set")
    assert client.get(keys.batch_spec(poll_id.split(".")[0])) is None  # the kept rows go with it
