"""Making the pool the size the policy asked for. The only module that talks to Celery's control API.

* :class:`PoolActuator` (``celery``): ``pool_grow`` / ``pool_shrink`` addressed to one worker at a time
  (``destination=[w]``, ``reply=True``), the reply checked for ``'ok'`` and the reason logged when it is
  missing, as Flower's ``api/control.py`` does. Growth goes to the smallest pools first (then the host with
  the fewest processes), so processes spread over workers and hosts. Shrinking removes one process at a
  time from the worker with the most idle processes. prefork only ever stops an idle process and answers
  "All processes busy" otherwise: nothing running is killed, and a shrink that finds every process busy
  is retried next tick (the pool drains first). A worker gets no second shrink until its heartbeat shows
  the first: billiard's shrink picks the stopped process again until the pool reaps it (up to 5 s later),
  so a quick second shrink lowers the pool's target without stopping anything, and the pool stays too big.
* :class:`ProcessActuator` (``process``, what ``inferpool up`` uses): the same, and when every worker's pool
  is at ``worker_max_procs`` it starts another ``inferpool worker --role work`` on this host; it stops the
  workers it started first when shrinking, with SIGTERM: Celery's warm shutdown finishes running tasks and
  (acks_late) returns prefetched messages to the queue, so none is lost.
* replica actuators (``compose``, ``external``) live in :mod:`scaler.replicas`.

prefork starts grown processes on its pool-maintenance timer (every 5 s), so a grow shows in heartbeats
and ``inspect().stats()`` up to ~6 s after the worker said "pool will grow". Each actuator therefore
reports what it asked for until a heartbeat shows that size, or ``SETTLE_S`` has passed (then the
heartbeat wins: the command did not take).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from scaler.load_signal import WorkerView

logger = logging.getLogger(__name__)

SETTLE_S = 8.0  # longest a heartbeat may lag a pool command: 5 s maintenance timer, process start, 1 s beat
REPLY_TIMEOUT_S = 1.0
WORKER_START_TIMEOUT_S = 60.0  # a started worker that never heartbeats by then is killed
WORKER_STOP_TIMEOUT_S = 10.0  # on close, started workers get this long to finish their tasks
# With no worker at all, wait this long before starting one: the supervisor's own worker may be starting.
FIRST_WORKER_GRACE_S = 20.0


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: int  # processes added (+) or removed (-) by this call
    complete: bool  # the pool is (or will be) at the target
    detail: str


class Control(Protocol):
    """The part of ``celery.app.control.Control`` used here (Flower calls the same two)."""

    def pool_grow(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any: ...

    def pool_shrink(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any: ...


class Actuator(Protocol):
    name: str

    def current(self, workers: Sequence[WorkerView]) -> int: ...

    def capacity(self, workers: Sequence[WorkerView]) -> int | None: ...

    def apply(self, target: int, workers: Sequence[WorkerView], reason: str) -> Outcome: ...

    def close(self) -> None: ...


NO_REPLY = "no reply (worker gone or busy)"


def reply_status(reply: Any, worker: str) -> tuple[bool, str]:
    """(ok, message) from a broadcast reply, ``[{worker: {"ok": ...} | {"error": ...}}]``."""
    for item in reply or []:
        if isinstance(item, dict) and worker in item:
            body = item[worker]
            if isinstance(body, dict) and "ok" in body:
                return True, str(body["ok"])
            return False, str(body.get("error", body) if isinstance(body, dict) else body)
    return False, NO_REPLY


class PoolActuator:
    """Resizes the pools of running workers, each between 1 and ``worker_max_procs`` processes."""

    name = "celery"

    def __init__(self, control: Control, worker_max_procs: int, clock: Callable[[], float] = time.time) -> None:
        self.control, self.worker_max, self.clock = control, worker_max_procs, clock
        self._commanded: dict[str, tuple[int, float]] = {}  # worker -> (processes asked for, epoch)

    def sizes(self, workers: Sequence[WorkerView]) -> dict[str, int]:
        out = {}
        for w in workers:
            asked = self._commanded.get(w.name)
            if asked is not None and w.processes != asked[0] and self.clock() < asked[1] + SETTLE_S:
                out[w.name] = asked[0]
            else:
                self._commanded.pop(w.name, None)
                out[w.name] = w.processes
        return out

    def current(self, workers: Sequence[WorkerView]) -> int:
        return sum(self.sizes(workers).values())

    def capacity(self, workers: Sequence[WorkerView]) -> int | None:
        return len(workers) * self.worker_max

    def apply(self, target: int, workers: Sequence[WorkerView], reason: str) -> Outcome:
        sizes = self.sizes(workers)
        cur = sum(sizes.values())
        if target > cur:
            added = self.grow(target - cur, workers, sizes, reason)
            return Outcome(added, cur + added >= target, f"grew {added} of {target - cur}")
        if target < cur:
            removed = 0
            while cur - removed > target and self.shrink_one(self.shrink_order(workers, sizes), sizes, reason):
                removed += 1
            done = cur - removed <= target
            why = "" if done else "; the rest busy or mid-shrink, next tick"
            return Outcome(-removed, done, f"shrank {removed} of {cur - target}{why}")
        return Outcome(0, True, "at target")

    def grow(self, n: int, workers: Sequence[WorkerView], sizes: dict[str, int], reason: str) -> int:
        """Add up to ``n`` processes, smallest pools first; returns how many were added."""
        by_host: dict[str, int] = {}
        for w in workers:
            by_host[w.host] = by_host.get(w.host, 0) + sizes[w.name]
        plan: dict[str, int] = {}
        for _ in range(n):
            room = [w for w in workers if sizes[w.name] + plan.get(w.name, 0) < self.worker_max]
            if not room:
                break
            w = min(room, key=lambda w: (sizes[w.name] + plan.get(w.name, 0), by_host[w.host], w.name))
            plan[w.name] = plan.get(w.name, 0) + 1
            by_host[w.host] += 1
        added = 0
        for name, k in plan.items():
            answer = self._command("pool_grow", name, k, reason)
            if answer == "ok":
                sizes[name] += k
                self._commanded[name] = (sizes[name], self.clock())
                added += k
            elif answer == "silent":
                # A main process busy with tasks may carry the grow out and answer after the timeout: trust
                # the asked-for size until a heartbeat shows it or SETTLE_S passes, so the next tick neither
                # grows it again nor starts a worker for it. Not counted as added: the outcome is unknown.
                self._commanded[name] = (sizes[name] + k, self.clock())
        return added

    def shrinking(self, w: WorkerView) -> bool:
        """A shrink sent to ``w`` that its heartbeat does not show yet (see the module docstring)."""
        asked = self._commanded.get(w.name)
        return asked is not None and w.processes > asked[0] and self.clock() < asked[1] + SETTLE_S

    def shrink_order(self, workers: Sequence[WorkerView], sizes: dict[str, int]) -> list[WorkerView]:
        """Workers that can lose a process (keeping one each, none mid-shrink), the most idle first."""
        able = [w for w in workers if sizes[w.name] > 1 and not self.shrinking(w)]
        return sorted(able, key=lambda w: (-(sizes[w.name] - w.busy), -sizes[w.name], w.name))

    def shrink_one(self, candidates: Sequence[WorkerView], sizes: dict[str, int], reason: str) -> bool:
        """Stop one idle process on the first candidate that has one; False when every one is busy."""
        for w in candidates:
            if self._command("pool_shrink", w.name, 1, reason) == "ok":
                sizes[w.name] -= 1
                self._commanded[w.name] = (sizes[w.name], self.clock())
                return True
        return False

    def _command(self, command: str, worker: str, n: int, reason: str) -> Literal["ok", "refused", "silent"]:
        """Send one command to one worker: "ok", "refused" (an error reply or a broker error) or "silent"."""
        try:
            method = getattr(self.control, command)
            reply = method(n, destination=[worker], reply=True, timeout=REPLY_TIMEOUT_S)
        except Exception as exc:  # broker gone mid-command: the next tick tries again
            ok, message = False, f"{type(exc).__name__}: {exc}"
        else:
            ok, message = reply_status(reply, worker)
        if ok:
            logger.info("%s(%d) on %s: %s (reason %s)", command, n, worker, message, reason)
            return "ok"
        if message == NO_REPLY:
            # What happens next is the caller's: a grow is trusted for a while, a shrink retried next tick.
            logger.warning("%s(%d) on %s: %s within %g s (reason %s)", command, n, worker, message, REPLY_TIMEOUT_S,
                           reason)  # fmt: skip
            return "silent"
        logger.warning("%s(%d) on %s refused: %s (reason %s); retry next tick", command, n, worker, message, reason)
        return "refused"

    def close(self) -> None:
        pass


class Started:
    """A worker process this actuator started."""

    def __init__(self, name: str, procs: int, popen: Any, started: float) -> None:
        self.name, self.procs, self.popen, self.started = name, procs, popen, started
        self.stopping = False


def worker_argv(name: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "cli.main", "worker", "--role", "work", "-c", str(concurrency), "--name", name]


def launch_worker(name: str, concurrency: int, env: dict[str, str] | None = None, log: Any = None) -> subprocess.Popen:
    """``inferpool worker --role work`` as a child of the scaler; by default with its environment and output."""
    return subprocess.Popen(
        worker_argv(name, concurrency), env=env, stdout=log, stderr=subprocess.STDOUT if log else None
    )


class ProcessActuator:
    """Pools first; past every pool's cap, whole workers on this host (stopped first when shrinking)."""

    name = "process"

    def __init__(
        self,
        pool: PoolActuator,
        host: str,
        prefix: str,
        launch: Callable[[str, int], Any] = launch_worker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool, self.host, self.prefix, self.launch, self.clock = pool, host, prefix, launch, clock
        self.started: dict[str, Started] = {}
        self._serial = 0
        self._created = clock()

    def _reap(self, workers: Sequence[WorkerView]) -> None:
        seen = {w.name for w in workers}
        for name, s in list(self.started.items()):
            if s.popen.poll() is not None:
                logger.info("worker %s exited (%s)", name, s.popen.returncode)
                del self.started[name]
            elif name not in seen and not s.stopping and self.clock() - s.started > WORKER_START_TIMEOUT_S:
                logger.error("worker %s sent no heartbeat in %.0f s; killing it", name, WORKER_START_TIMEOUT_S)
                s.popen.kill()
                s.stopping = True

    def _pending(self, workers: Sequence[WorkerView]) -> list[Started]:
        """Started, not stopping, and not heartbeating yet: counted at the size they were started with."""
        seen = {w.name for w in workers}
        return [s for s in self.started.values() if s.name not in seen and not s.stopping]

    def _live(self, workers: Sequence[WorkerView]) -> list[WorkerView]:
        """Heartbeating workers minus those told to stop (they finish their tasks, then exit)."""
        return [w for w in workers if not (w.name in self.started and self.started[w.name].stopping)]

    def current(self, workers: Sequence[WorkerView]) -> int:
        self._reap(workers)
        return self.pool.current(self._live(workers)) + sum(s.procs for s in self._pending(workers))

    def capacity(self, workers: Sequence[WorkerView]) -> int | None:
        return None

    def apply(self, target: int, workers: Sequence[WorkerView], reason: str) -> Outcome:
        cur = self.current(workers)
        live = self._live(workers)
        sizes = self.pool.sizes(live)
        if not workers and not self.started and self.clock() < self._created + FIRST_WORKER_GRACE_S:
            return Outcome(0, False, "no worker yet; waiting for the supervisor's to start")
        if target > cur:
            added = self.pool.grow(target - cur, live, sizes, reason)
            # Only what no live pool has room for becomes a new worker. A grow that went unanswered (a busy
            # main process answers late) or was refused is retried next tick: a second worker would add a
            # main process that costs CPU on every task, and under load its start-up competes with the work.
            room = sum(max(self.pool.worker_max - sizes[w.name], 0) for w in live)
            short = target - cur - added
            beyond = max(short - room, 0)
            while beyond > 0:
                k = min(self.pool.worker_max, beyond)
                self._start(k, reason)
                added, beyond = added + k, beyond - k
            complete = cur + added >= target
            why = "" if complete else "; the pools' grow is retried next tick"
            return Outcome(added, complete, f"grew {added}{why}")
        removed = 0
        while cur - removed > target:
            k = self._shrink_one(live, sizes, workers, reason)
            if not k:
                break
            removed += k
        done = cur - removed <= target
        return Outcome(-removed, done, f"removed {removed} of {cur - target}" + ("" if done else "; all busy"))

    def _shrink_one(
        self, live: list[WorkerView], sizes: dict[str, int], workers: Sequence[WorkerView], reason: str
    ) -> int:
        """One step down: a started worker's last process (whole worker), else one idle process. Returns how
        many processes left (a stopped worker counts with its whole pool), 0 if nothing could go."""
        ours = sorted((w for w in live if w.name in self.started), key=lambda w: -self.started[w.name].started)
        for w in ours:
            if sizes[w.name] == 1:
                self._stop(w.name, reason)
                live.remove(w)
                return 1
        pending = sorted(self._pending(workers), key=lambda s: -s.started)
        if pending and pending[0].procs <= 1:
            self._stop(pending[0].name, reason)
            return pending[0].procs
        order = self.pool.shrink_order(ours, sizes) + self.pool.shrink_order([w for w in live if w not in ours], sizes)
        return 1 if self.pool.shrink_one(order, sizes, reason) else 0

    def _start(self, procs: int, reason: str) -> None:
        self._serial += 1
        name = f"{self.prefix}-s{self._serial}@{self.host}"
        while name in self.started:
            self._serial += 1
            name = f"{self.prefix}-s{self._serial}@{self.host}"
        popen = self.launch(name, procs)
        self.started[name] = Started(name, procs, popen, self.clock())
        logger.info("started worker %s with %d processes (pid %s, reason %s)", name, procs, popen.pid, reason)

    def _stop(self, name: str, reason: str) -> None:
        s = self.started[name]
        s.stopping = True
        s.popen.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish, prefetched ones return
        logger.info("stopping worker %s (warm shutdown, reason %s)", name, reason)

    def close(self) -> None:
        """Warm-stop every worker this actuator started; kill those still running after the timeout."""
        for s in self.started.values():
            if s.popen.poll() is None and not s.stopping:
                s.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for s in self.started.values():
            try:
                s.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %s did not stop in %.0f s; killing it", s.name, WORKER_STOP_TIMEOUT_S)
                s.popen.kill()
                s.popen.wait()
        self.started.clear()
