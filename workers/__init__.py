"""Celery workers: the app, the predict task, per-process model runtime and heartbeats."""
