"""What the worker's main process does with a task's outcome: Celery's ``Request``, as inferpool needs it.

These classes run in the main process (prefork children only run the task body): ``ServingRequest``
closes the model gate when a pool process reports it cannot serve (``workers.serving``).
"""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.worker.request import Request

from workers.serving import CannotServe, gate


class ServingRequest(Request):
    """The request of every inferpool task."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, CannotServe):
            # Stop taking messages before this one goes back to its queue, so another worker gets it.
            gate.close(str(exc.reason))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class OneEventRequest(ServingRequest):
    """Task events at a third of their cost: only the last one (succeeded, failed, retried, rejected,
    revoked), carrying the name and sizes that ``task-received`` would have carried, so Flower still lists
    the task with its outcome and run time. Each event is a synchronous PUBLISH from the worker's main
    process and a JSON decode in Flower: three per task cost the work worker ~0.6 ms of its main process and
    Flower ~1 ms per task at 36 tasks/s. The task itself says ``send_events=False`` so that Celery's consumer
    sends no ``task-received``; this class sends the rest itself."""

    def send_event(self, type: str, **fields: Any) -> None:
        eventer = self._eventer
        if type == "task-started" or eventer is None or not eventer.enabled:
            return
        eventer.send(type, uuid=self.id, name=self.name, args=self.argsrepr, kwargs=self.kwargsrepr, **fields)
