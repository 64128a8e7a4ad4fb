"""Background threads of a worker's main process that act every few seconds until the worker shuts down
(the heartbeat, the re-dispatcher): one loop, one stop flag set on Celery's ``worker_shutdown``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import worker_shutdown

logger = logging.getLogger(__name__)

# At shutdown, how long the worker waits for a thread's last step (a heartbeat removing itself, so that
# the worker is gone from every view when its process exits); a thread still busy after it is left behind.
SHUTDOWN_JOIN_S = 2.0


class Ticker:
    """Calls ``tick`` every ``interval_s`` on a daemon thread; ``on_stop`` runs once the worker shuts down.

    Made at import (so its shutdown handler is connected early, with the worker's others), started when
    the worker is ready. A tick that raises is logged at debug level and the next one tries again: the
    usual cause is Redis restarting, which every tick outlives.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        worker_shutdown.connect(self._shutdown, weak=False)

    def _shutdown(self, **_: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(SHUTDOWN_JOIN_S)

    def start(
        self, interval_s: float, tick: Callable[[], None], on_stop: Callable[[], None] | None = None
    ) -> threading.Thread:
        def loop() -> None:
            while not self.stopping.wait(interval_s):
                try:
                    tick()
                except Exception as exc:
                    logger.debug("%s failed: %s", self.name, exc)
            if on_stop is not None:
                try:
                    on_stop()
                except Exception as exc:
                    logger.debug("%s: stopping failed: %s", self.name, exc)

        self.thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self.thread.start()
        return self.thread
