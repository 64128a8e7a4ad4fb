"""Contracts with the internals of kombu, Celery, billiard and prometheus_client that inferpool relies on.

Each test names the module of ours that relies on what it checks. A release that changes one of these
fails here, loudly, instead of making the scaler under-count depth or the re-dispatcher resend live
work. The Redis key layout is read back from real publishes on a real Redis (its own database of the
session's server). No workers; about 2 s.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import billiard.pool
import pytest
import redis
from celery import Celery
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool
from celery.worker import components
from celery.worker import control as celery_control
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.asynchronous.timer import Timer
from kombu.transport import redis as kombu_redis
from packaging.requirements import Requirement

from inferpool import keys, publish, queues, scripts, versions
from inferpool.celery_config import celery_config
from inferpool.settings import Settings
from scaler.load_signal import SignalReader
from workers import app as workers_app
from workers import control as workers_control

CONTRACT_DB = 9
# Headers Celery's send_task writes that inferpool's messages leave out: canvas stamping and task
# replacement, neither of which a predict task uses (Celery's Request reads them with defaults).
CELERY_ONLY_HEADERS = {"replaced_task_nesting", "stamped_headers", "stamps"}
# reply_to names the sender's result consumer; inferpool's results travel in its own keys.
CELERY_ONLY_PROPERTIES = {"reply_to"}
# Values that differ by design: sizes instead of rows, the producer, results never stored, a fresh tag.
DIFFERENT_VALUES = {"argsrepr", "origin", "ignore_result", "delivery_tag"}
CORRELATION_PATTERN = '"correlation_id": ?"([^"]*)"'  # Lua, as in workers/redispatch.py


@pytest.fixture
def broker(redis_server) -> Iterator[tuple[Celery, redis.Redis]]:
    """inferpool's Celery configuration on a database of its own, emptied before and after."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{CONTRACT_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = Celery("contracts", set_as_current=False)
    app.conf.update(celery_config(Settings(redis_url=url)))
    yield app, client
    app.close()
    client.flushdb()
    client.close()


def spec_for(queue: str, task_id: str = "t-contract") -> dict:
    return {"id": task_id, "n": 3, "work_ms": 0, "queue": queue}


def decoded_body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


# --- kombu: the Redis transport ------------------------------------------------------------------------


def test_channel_connparams_and_create_client_keep_the_signatures_workers_app_wraps(broker):
    """workers/app.py wraps Channel._connparams and Channel._create_client and reads channel.connection.client."""
    for original in (workers_app._kombu_connparams, workers_app._kombu_create_client):
        params = inspect.signature(original).parameters
        assert list(params) == ["self", "asynchronous"], original
        assert params["asynchronous"].default is False
    assert kombu_redis.Channel._connparams is workers_app._connparams_or_gone
    assert kombu_redis.Channel._create_client is workers_app._create_client_once
    app, _ = broker
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel.connection.client is conn
        assert isinstance(channel.pool, redis.ConnectionPool)
        # conn_or_acquire() (acks, unacked bookkeeping) builds its client with _create_client() on channel.pool.
        assert "self._create_client()" in inspect.getsource(kombu_redis.Channel.conn_or_acquire)
        assert workers_app._kombu_create_client(channel).connection_pool is channel.pool
        assert set(workers_app._kombu_connparams(channel)) >= {"host", "port", "db", "connection_class"}


def test_channel_names_match_inferpool_keys(broker):
    """inferpool/keys.py spells kombu's key names and priority lists out for readers that skip kombu."""
    app, _ = broker
    q = "contract.names"
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        assert ch.sep == keys.PRIORITY_SEP
        assert tuple(ch.priority_steps) == keys.PRIORITY_STEPS
        assert ch.unacked_key == keys.UNACKED_HASH
        assert ch.unacked_index_key == keys.UNACKED_INDEX
        assert [ch._q_for_pri(q, p) for p in ch.priority_steps] == keys.priority_lists(q)


def test_publish_layout_read_back_from_redis(broker):
    """inferpool/queues.py: LPUSH onto the queue's list (oldest at -1), priorities on sub-lists named with sep."""
    app, r = broker
    q = "contract.layout"
    for i, priority in enumerate((0, 0, 9)):
        app.send_task(publish.TASK_PREDICT, args=[spec_for(q, f"t{i}")], task_id=f"t{i}", queue=q, priority=priority)
    lists = {k.decode() for k in r.keys(f"{q}*") if r.type(k) == b"list"}
    assert lists == {q, f"{q}{keys.PRIORITY_SEP}9"}
    assert lists <= set(keys.priority_lists(q))
    assert r.llen(q) == 2
    assert json.loads(r.lindex(q, -1))["headers"]["id"] == "t0"  # the oldest, as BRPOP takes it
    assert queues.snapshot(r, (q,)).queues[q].depth == 3


def test_unacked_entry_shape_for_an_inferpool_message(broker):
    """A message taken and not acked: scaler/load_signal.py counts it by its value's ending, workers/redispatch.py
    finds its task id with a Lua pattern in its tail, inferpool/queues.py ages it by its index score."""
    app, r = broker
    q = "contract.unacked"
    r.lpush(q, publish.task_message("t-held", spec_for(q, "t-held"), q))
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        before = time.time()
        message = ch.basic_get(q, no_ack=False)
        assert message is not None
        # kombu reads inferpool's bytes as Celery's protocol 2.
        assert message.headers["task"] == publish.TASK_PREDICT and message.headers["id"] == "t-held"
        assert message.properties["correlation_id"] == "t-held"
        assert message.delivery_info["routing_key"] == q
        assert message.decode() == [[spec_for(q, "t-held")], {}, publish._EMBED]

        tag = message.delivery_tag
        assert r.hkeys(keys.UNACKED_HASH) == [tag.encode()]
        assert before - 1 <= r.zscore(keys.UNACKED_INDEX, tag) <= time.time() + 1
        value = r.hget(keys.UNACKED_HASH, tag)
        raw, exchange, routing_key = json.loads(value)
        assert (exchange, routing_key) == ("", q)
        assert raw["properties"]["delivery_tag"] == tag
        assert value.rstrip().endswith(SignalReader(r, q, "w")._held_suffix)
        tail = value[-scripts.TAIL_BYTES :].decode()
        assert re.search(CORRELATION_PATTERN, tail).group(1) == "t-held"
        assert CORRELATION_PATTERN in scripts.FindMessages.source
        found = r.eval(scripts.FindMessages.source, 1, keys.UNACKED_HASH, "hash", 0, 10, "t-held", "t-other")
        assert found == [-1, b"t-held"]
        snap = queues.snapshot(r, (q,))
        assert snap.unacked == 1 and snap.queues[q].depth == 0

        ch.basic_ack(tag)
        assert not r.hexists(keys.UNACKED_HASH, tag) and r.zscore(keys.UNACKED_INDEX, tag) is None


def test_redispatch_finds_queued_messages_in_the_list(broker):
    """workers/redispatch.py scans queue lists page by page for correlation ids."""
    _, r = broker
    q = "contract.scan"
    r.lpush(q, publish.task_message("t-queued", spec_for(q, "t-queued"), q))
    assert r.eval(scripts.FindMessages.source, 1, q, "list", 0, 10, "t-queued") == [-1, b"t-queued"]


# --- inferpool/publish.py against Celery's own send_task ---------------------------------------------------


def test_task_message_has_the_layout_send_task_writes(broker):
    app, r = broker
    q = keys.QUEUE_WORK
    spec = spec_for(q, "t-same")
    app.send_task(publish.TASK_PREDICT, args=[spec], task_id="t-same", queue=q)
    theirs = json.loads(r.rpop(q))
    ours = json.loads(publish.task_message("t-same", spec, q))

    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == (set(theirs["headers"]) - CELERY_ONLY_HEADERS) | {keys.ENQUEUED_HEADER}
    assert set(ours["properties"]) == set(theirs["properties"]) - CELERY_ONLY_PROPERTIES
    delivery_info = {"exchange": "", "routing_key": q}
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"] == delivery_info
    for part in ("headers", "properties"):
        for key in set(ours[part]) & set(theirs[part]) - DIFFERENT_VALUES:
            assert ours[part][key] == theirs[part][key], f"{part}.{key}"
    for key in set(ours) - {"headers", "properties", "body"}:
        assert ours[key] == theirs[key], key
    assert decoded_body(ours) == decoded_body(theirs) == [[spec], {}, publish._EMBED]


# --- Celery: remote control, the worker's timer and requests ------------------------------------------------


def test_celery_pool_grow_is_the_command_workers_control_extends():
    """workers/control.py replaces pool_grow with Celery's body plus an immediate maintain_pool()."""
    body = inspect.getsource(celery_control.pool_grow)
    for step in (
        "state.consumer.controller.autoscaler",
        "state.consumer.pool.grow(n)",
        "state.consumer._update_prefetch_count(n)",
    ):
        assert step in body, step
    assert list(inspect.signature(Consumer._update_prefetch_count).parameters) == ["self", "index"]
    assert celery_control.Panel.data["pool_grow"] is workers_control.pool_grow
    meta = celery_control.Panel.meta["pool_grow"]
    assert meta.args == [("n", int)] and meta.signature == "[N=1]"


def test_prefork_pool_exposes_its_processes_and_maintenance():
    """workers/heartbeat.py counts pool._pool._pool; workers/control.py calls pool.maintain_pool()."""
    assert issubclass(AsynPool, billiard.pool.Pool)  # what a worker with an event loop runs
    pool = TaskPool(limit=1, initargs=(Celery("contracts", set_as_current=False), "contracts@test"))
    pool.start()
    try:
        assert isinstance(pool._pool, billiard.pool.Pool) and isinstance(pool._pool._pool, list)
        assert len(pool._pool._pool) == pool.num_processes == 1
        pool.grow(1)
        pool.maintain_pool()
        assert len(pool._pool._pool) == pool.num_processes == 2
    finally:
        pool.stop()


def test_worker_timer_schedule_queue():
    """workers/flower.py lists scheduled requests from consumer.timer.schedule.queue."""
    assert components._Timer is Timer  # the timer of a worker with an event loop (prefork on Linux)
    timer = Timer()
    request = object()
    timer.call_at(time.time() + 60, lambda r: None, args=(request,), priority=3)
    try:
        (waiting,) = timer.schedule.queue
        assert waiting.entry.args[0] is request and waiting.priority == 3
    finally:
        timer.stop()
    assert "safe" in inspect.signature(Request.info).parameters


# --- prometheus_client ------------------------------------------------------------------------------------


def test_prometheus_value_class_is_read_when_each_metric_is_made(tmp_path, monkeypatch):
    """inferpool/telemetry.py swaps values.ValueClass after import when the metrics directory is chosen late."""
    import prometheus_client.metrics as pm
    from prometheus_client import CollectorRegistry, Counter, values
    from prometheus_client.multiprocess import mark_process_dead

    assert "values.ValueClass(" in inspect.getsource(pm)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert values.get_value_class() is values.MutexValue
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.get_value_class())
    Counter("contract_total", "x", registry=CollectorRegistry()).inc()
    assert list(tmp_path.glob("counter_*.db"))
    assert "livemax" in pm.Gauge._MULTIPROC_MODES  # inferpool_model_info
    assert callable(mark_process_dead)


# --- inferpool/versions.py ---------------------------------------------------------------------------------


def test_tested_ranges_are_the_pyproject_bounds():
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    for name, (low, high) in versions.TESTED.items():
        assert {str(s) for s in declared[name]} == {f">={low}", f"<{high}"}, name
    assert versions.untested() == []  # the locked set is inside every range


def test_untested_version_warns_once(monkeypatch, caplog):
    assert versions.untested({"celery": "5.8.0", "kombu": "5.7.0rc1", "redis": "4.6.0"}) == [
        "celery 5.8.0 (tested: >=5.4,<5.8)",
        "redis 4.6.0 (tested: >=5,<9)",
    ]
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "_installed", lambda name: {"kombu": "6.0.0"}.get(name))
    with caplog.at_level(logging.WARNING, logger="inferpool.versions"):
        versions.warn_untested_versions()
        versions.warn_untested_versions(sender="celery@host")
    assert [r.getMessage().count("kombu 6.0.0") for r in caplog.records] == [1]
