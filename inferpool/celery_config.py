"""The Celery configuration every process shares, built from :class:`inferpool.settings.Settings`.

Workers run tasks on it (``workers/app.py`` adds their task modules and kombu fixes); the scaler only
sends remote-control commands with it; the API publishes without Celery (``inferpool/publish.py``).

Delivery choices (see README, "Delivery"):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only
  after its task ran, and a child killed mid-task puts it straight back, so a
  crash costs a re-run, never a lost job (results are written idempotently).
* ``visibility_timeout`` (``INFERPOOL_VISIBILITY_TIMEOUT_S``, 60 s): if a whole
  worker host dies, its unacked messages return to the queue after this long.
  It must exceed the longest task, so tasks get a hard ``task_time_limit``
  below it; otherwise a slow task would be delivered twice while still running.
* ``result_expires`` (``INFERPOOL_RESULT_TTL_S``, 1 h): Celery's own results;
  predictions live in inferpool's keys with the same TTL.
* JSON only: the broker never carries pickles.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

from celery import Celery

from inferpool import keys
from inferpool.settings import Settings, get_settings

TASK_SOFT_LIMIT_MARGIN_S = 2
UNACKED_MUTEX_EXPIRE_S = 10
# A new pool process loads the model before it reports in; on a loaded host that can take seconds,
# and at Celery's default (4 s) the parent kills it and forks another, forever.
POOL_PROCESS_START_TIMEOUT_S = 60.0


def soft_time_limit_s(s: Settings) -> int:
    return max(1, s.task_time_limit_s - TASK_SOFT_LIMIT_MARGIN_S)


def tls_options(url: str) -> dict:
    """``rediss://`` checks the server's certificate unless the URL itself says how (``?ssl_cert_reqs=...``).

    Left alone, kombu would connect without checking it and Celery's result backend refuses the URL.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return {}
    required = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return {"broker_use_ssl": required, "redis_backend_use_ssl": required}


def celery_config(s: Settings) -> dict:
    return {
        **tls_options(s.redis_url),
        "broker_url": s.redis_url,
        "result_backend": s.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_proc_alive_timeout": POOL_PROCESS_START_TIMEOUT_S,
        "task_time_limit": s.task_time_limit_s,
        # The soft limit raises inside the task, which then marks its job failed (counted in the ledger);
        # at the hard limit the child is killed and Celery acks the message with no one the wiser.
        "task_soft_time_limit": soft_time_limit_s(s),
        # A task killed at the hard limit goes back to the queue rather than being acked unfinished
        # (its job would wait forever); tasks that fail on their own mark their job failed and return.
        "task_acks_on_failure_or_timeout": False,
        "result_expires": s.result_ttl_s,
        "task_ignore_result": True,
        # Task events for Flower; the online task opts out (inferpool.publish says why). Producers push
        # messages themselves (inferpool.publish), so no task-sent event exists.
        "worker_send_task_events": s.task_events,
        "task_default_queue": keys.QUEUE_ONLINE,
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        # False on purpose: on a broker connection loss Celery would kill running late-ack tasks, and when
        # Redis is also the result backend (down too) the cancel fails half way and *acks* the message
        # once Redis is back: the task is lost. Left running, a task writes its result and either acks or
        # comes back after the visibility timeout as a counted duplicate.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Fail a publish fast when Redis is gone: the API answers 503 rather than hang.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        "broker_transport_options": {
            "visibility_timeout": s.visibility_timeout_s,
            "unacked_restore_interval": s.restore_interval_s,
            "unacked_restore_throttle": 1,
            # The sweep holds a mutex key in Redis; a worker killed (or a Redis restarted) mid-sweep leaves it
            # held until it expires, and kombu's default of 300 s would stop every restore for 5 minutes.
            # A sweep takes milliseconds.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "health_check_interval": 10,
        },
        "result_backend_transport_options": {"socket_connect_timeout": 2, "socket_timeout": 10},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def make_celery(s: Settings | None = None, imports: tuple[str, ...] = ()) -> Celery:
    """A Celery app on this configuration; ``imports`` are the task modules a worker loads."""
    app = Celery("inferpool")
    app.conf.update(celery_config(s or get_settings()))
    app.conf.imports = imports
    return app
