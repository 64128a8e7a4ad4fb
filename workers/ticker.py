"""Background threads of a worker's main process that act every few seconds until the worker shuts down
(the heartbeat, the re-dispatcher): one loop, one stop flag set on Celery's ``worker_shutdown``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import worker_shutdown

logger = logging.getLogger(__name__)


class Ticker:
    """Calls ``tick`` every ``interval_s`` on a daemon thread; ``on_stop`` runs once the worker shuts down.

    A tick that raises is logged at debug level and the next one tries again: the usual cause is Redis
    restarting, which every tick outlives.
    """

    def __init__(self, name: str, interval_s: float) -> None:
        self.name, self.interval_s = name, interval_s
        self.stopping = threading.Event()
        worker_shutdown.connect(self._shutdown, weak=False)

    def _shutdown(self, **_: Any) -> None:
        self.stopping.set()

    def start(self, tick: Callable[[], None], on_stop: Callable[[], None] | None = None) -> threading.Thread:
        def loop() -> None:
            while not self.stopping.wait(self.interval_s):
                try:
                    tick()
                except Exception as exc:
                    logger.debug("%s failed: %s", self.name, exc)
            if on_stop is not None:
                try:
                    on_stop()
                except Exception as exc:
                    logger.debug("%s: stopping failed: %s", self.name, exc)

        thread = threading.Thread(target=loop, name=self.name, daemon=True)
        thread.start()
        return thread
