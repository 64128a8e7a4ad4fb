"""Remote-control commands of inferpool's workers.

``pool_grow`` replaces Celery's command of the same name (same arguments, same reply): Celery only
raises the pool's target and leaves the new processes to the pool's maintenance timer, which runs
every 5 s; the scaler's answer to a load step then waits up to 5 s before any process exists. Here
the maintenance runs at once, in the worker's event loop as the timer would run it.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, nok, ok


@control_command(args=[("n", int)], signature="[N=1]")
def pool_grow(state: Any, n: int = 1, **kwargs: Any) -> dict:
    """Grow the pool by n processes, started now."""
    consumer = state.consumer
    if consumer.controller.autoscaler:
        return nok("pool_grow is not supported with autoscale. Adjust autoscale range instead.")
    consumer.pool.grow(n)
    consumer._update_prefetch_count(n)
    maintain = getattr(consumer.pool, "maintain_pool", None)
    if maintain is not None:
        maintain()
    return ok("pool will grow")
