"""The scaler: observe the queue, decide a pool size (pure policy), grow or shrink Celery worker processes.

``signal`` (what Redis shows each tick) → ``policy`` (Erlang-C, pure; ``tutorial`` is the baseline) →
``actuators`` (Celery remote control, worker processes) or ``replicas`` (compose, KEDA/HPA), run by
``daemon`` and started by ``cli`` (``inferpool scaler``); ``metrics`` is what it exports.
"""
