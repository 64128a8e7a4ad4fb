"""inferpool: a queue-based batch inference worker pool on Celery and Redis."""

__version__ = "0.1.0"
