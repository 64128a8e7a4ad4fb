"""The scaler: observe the queue, decide a pool size (pure policy), grow or shrink Celery worker processes."""
