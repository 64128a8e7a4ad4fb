"""The workers' Celery app: the shared configuration (:mod:`inferpool.celery_config`), the task modules
a worker loads, two fixes to kombu's Redis channel that only a consuming, acking process needs, and the
online worker's threads pool (:mod:`workers.inline_pool`)."""

from __future__ import annotations

import redis
from celery import Celery, concurrency, signals
from kombu.transport import redis as kombu_redis

from inferpool.celery_config import make_celery
from inferpool.settings import Settings
from inferpool.versions import warn_untested_versions

_kombu_connparams = kombu_redis.Channel._connparams


def _connparams_or_gone(self, asynchronous: bool = False) -> dict:
    """kombu 5.x: after a broker connection drops, Celery collects it, and an ack, reject or restore on a
    channel of that connection (a task that was running then, finishing now) reads its client, now None:
    an AttributeError, "Unrecoverable error", and the whole worker exits. Raised as a connection error
    instead, Celery logs it and goes on; the message, still unacked in Redis, comes back after the
    visibility timeout and its second run counts as a duplicate."""
    if self.connection is None or self.connection.client is None:
        raise redis.exceptions.ConnectionError("this broker connection was closed after a connection loss")
    return _kombu_connparams(self, asynchronous)


kombu_redis.Channel._connparams = _connparams_or_gone

_kombu_create_client = kombu_redis.Channel._create_client


def _create_client_once(self, asynchronous: bool = False):
    """kombu 5.x builds a new ``redis.Redis`` for each ack and each unacked-bookkeeping step (two per task),
    and redis-py 8's constructor fills a table of several hundred response callbacks every time: 15-20 % of
    a worker main process's CPU under load (py-spy). One client per channel and connection pool sends the
    same commands over the same pool; a new pool (after a reconnect) gets a new client."""
    if asynchronous:
        return _kombu_create_client(self, asynchronous)
    pool = self.pool
    client = self.__dict__.get("_inferpool_client")
    if client is None or client.connection_pool is not pool:
        client = self.__dict__["_inferpool_client"] = _kombu_create_client(self, False)
    return client


kombu_redis.Channel._create_client = _create_client_once


# `--pool threads` is the online worker's threads pool (workers.inline_pool): the worker command resolves
# the name after it has loaded this app, and only the online worker runs on threads.
concurrency.ALIASES["threads"] = "workers.inline_pool:TaskPool"

WORKER_TASK_MODULES = (
    "workers.tasks",
    "workers.heartbeat",
    "workers.redispatch",
    "workers.watchdog",
    "workers.metrics_server",
    "workers.flower",
    "workers.control",
)


def make_app(s: Settings | None = None) -> Celery:
    return make_celery(s, WORKER_TASK_MODULES)


app = make_app()
signals.celeryd_after_setup.connect(warn_untested_versions, weak=False)  # once the worker's logging is set up
