"""Actuators that set a replica count instead of resizing pools: slow outer loops run by a platform.

* :class:`ComposeActuator` (``compose``): ``docker compose up -d --no-recreate --scale worker=N``. Compose
  stops surplus containers with SIGTERM (Celery's warm shutdown) and kills them after the service's
  ``stop_grace_period`` (10 s unless set): give the worker service one longer than the longest task.
* :class:`ExternalActuator` (``external``): changes nothing itself. The scaler decides and exports
  ``inferpool_scaler_desired_processes``; KEDA or an HPA scales the worker Deployment on it
  (``deploy/k8s/``).

Both report the asked-for size for a while after asking, since containers and pods start slowly.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from scaler.actuators import Outcome
from scaler.load_signal import WorkerView

logger = logging.getLogger(__name__)

COMPOSE_TIMEOUT_S = 120.0
REPLICA_SETTLE_S = 60.0  # containers and pods start slowly: trust the asked-for count this long


class _Asked:
    """The last size asked for, reported as current until heartbeats show it or it is too old."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.procs: int | None = None
        self.at = 0.0

    def ask(self, procs: int) -> None:
        self.procs, self.at = procs, self.clock()

    def current(self, workers: Sequence[WorkerView]) -> int:
        seen = sum(w.processes for w in workers)
        if self.procs is not None and seen != self.procs and self.clock() < self.at + REPLICA_SETTLE_S:
            return self.procs
        return seen


def run_command(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT_S, check=False)


class ComposeActuator:
    """Sets the replica count of the compose worker service; each replica runs ``procs_per_replica``."""

    name = "compose"

    def __init__(
        self,
        service: str,
        procs_per_replica: int,
        compose_file: str | None = None,
        run: Callable[[list[str]], Any] = run_command,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service, self.per, self.file, self.run, self.clock = service, procs_per_replica, compose_file, run, clock
        self._asked = _Asked(clock)

    def command(self, replicas: int) -> list[str]:
        head = ["docker", "compose"] + (["-f", self.file] if self.file else [])
        # --no-deps: touch only the worker service; --no-recreate: running replicas stay as they are.
        tail = ["--scale", f"{self.service}={replicas}", "--no-deps", self.service]
        return [*head, "up", "-d", "--no-recreate", *tail]

    def current(self, workers: Sequence[WorkerView]) -> int:
        return self._asked.current(workers)

    def capacity(self, workers: Sequence[WorkerView]) -> int | None:
        return None

    def apply(self, target: int, workers: Sequence[WorkerView], reason: str) -> Outcome:
        replicas = max(1, math.ceil(target / self.per))
        before = self.current(workers)
        argv = self.command(replicas)
        try:
            done = self.run(argv)
            ok, err = done.returncode == 0, (done.stderr or "").strip()[-500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            logger.warning("%s failed: %s (reason %s); retry next tick", " ".join(argv), err, reason)
            return Outcome(0, False, err)
        logger.info("%s (reason %s)", " ".join(argv), reason)
        self._asked.ask(replicas * self.per)
        return Outcome(replicas * self.per - before, True, f"{self.service}={replicas}")

    def close(self) -> None:
        pass


class ExternalActuator:
    """Decides only: the platform (KEDA, an HPA) reads the exported desired processes and acts."""

    name = "external"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._asked = _Asked(clock)

    def current(self, workers: Sequence[WorkerView]) -> int:
        return self._asked.current(workers)

    def capacity(self, workers: Sequence[WorkerView]) -> int | None:
        return None

    def apply(self, target: int, workers: Sequence[WorkerView], reason: str) -> Outcome:
        before = self.current(workers)
        self._asked.ask(target)
        return Outcome(target - before, True, "left to the platform (inferpool_scaler_desired_processes)")

    def close(self) -> None:
        pass
