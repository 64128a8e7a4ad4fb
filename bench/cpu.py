"""Where the CPU goes: CPU seconds of the system under test, by role, read from /proc.

Only the process tree of the system under test counts: the process the benchmark started (``inferpool up``,
or a peer server) and its descendants, found by parent pid; other processes on the machine are never
looked at beyond their parent pid. Inside the tree a process's role comes from its place: a Celery
worker's main process is told from its pool processes by being their parent, and a process with no
role of its own (a uvicorn worker, a forked helper) takes its parent's.

The load client (this process) is measured separately and is not part of the system's figure.
A sampler thread reads the tree once a second, so a process that exits during the window (a pool
process shrunk by the scaler, a worker stopped) is counted up to its last sample.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
LOAD_CLIENT = "load client"
# Display order of inferpool's roles; anything else in the tree shows after them.
INFERPOOL_ROLES = (
    "api",
    "online worker main",
    "online worker pool",
    "work worker main",
    "work worker pool",
    "scaler",
    "flower",
    "redis",
    "inferpool up",
)
POOL_OF = {"online worker main": "online worker pool", "work worker main": "work worker pool"}


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    started: int  # clock ticks after boot: with the pid, names a process even if its pid is reused
    cpu_s: float  # user + system, all threads


def _stat(pid: str) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
    return Proc(int(pid), int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / TICKS_PER_S)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree(root: int) -> list[Proc]:
    """``root`` and its live descendants, parents before children."""
    procs = [p for p in map(_stat, (d for d in os.listdir("/proc") if d.isdigit())) if p]
    children: dict[int, list[Proc]] = defaultdict(list)
    by_pid = {}
    for p in procs:
        children[p.ppid].append(p)
        by_pid[p.pid] = p
    if root not in by_pid:
        return []
    out, stack = [], [by_pid[root]]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children[p.pid])
    return out


def inferpool_role(cmdline: str, parent_role: str | None) -> str:
    """The role of a process in ``inferpool up``'s tree, given its parent's role (None for the root)."""
    if parent_role is None:
        return "inferpool up"
    if parent_role in POOL_OF:  # prefork children carry their parent's command line: tell them by parent
        return POOL_OF[parent_role]
    if parent_role in POOL_OF.values():
        return parent_role
    if "celery" in cmdline and " worker " in cmdline:
        return "online worker main" if "inferpool.online" in cmdline else "work worker main"
    if "cli.main worker" in cmdline:  # before it execs Celery
        return "online worker main" if "--role online" in cmdline else "work worker main"
    for needle, role in (("redis-server", "redis"), ("cli.main api", "api"), ("scaler", "scaler")):
        if needle in cmdline:
            return role
    if "flower" in cmdline:
        return "flower"
    return parent_role


def single_role(name: str) -> Callable[[str, str | None], str]:
    """Every process of a peer's tree is that peer (one server process, and whatever it starts)."""
    return lambda _cmdline, _parent: name


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Usage:
    """CPU seconds by role over a window, the processes seen per role, and the load client's own CPU."""

    seconds: float
    by_role: dict[str, float]
    procs: dict[str, int]
    load_client_s: float

    @property
    def system_s(self) -> float:
        return sum(self.by_role.values())

    def ordered(self) -> list[tuple[str, float, int]]:
        known = [r for r in INFERPOOL_ROLES if r in self.by_role]
        rest = sorted(r for r in self.by_role if r not in INFERPOOL_ROLES)
        return [(r, self.by_role[r], self.procs[r]) for r in known + rest]


class CpuMeter:
    """Samples the tree under ``root`` from ``start(at)`` to ``stop()`` in a thread.

    A process's CPU in the window is its last sample minus its first (zero for one born in the window,
    as a forked child's counters start at zero; an exec'd one keeps its pid's counters, born in the tree).
    """

    def __init__(self, root: int, classify: Callable[[str, str | None], str], interval_s: float = 1.0) -> None:
        self.root, self.classify, self.interval_s = root, classify, interval_s
        self._roles: dict[tuple[int, int], str] = {}
        self._first: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._self0 = 0.0

    def _sample(self, baseline: bool) -> None:
        roles: dict[int, str] = {}
        for p in tree(self.root):
            key = (p.pid, p.started)
            role = self._roles.get(key)
            if role is None:
                role = self._roles[key] = self.classify(_cmdline(p.pid), roles.get(p.ppid) if roles else None)
            roles[p.pid] = role
            self._first.setdefault(key, p.cpu_s if baseline else 0.0)
            self._last[key] = p.cpu_s

    def _run(self, at: float) -> None:
        if self._stop.wait(max(0.0, at - time.monotonic())):
            return
        self._t0, self._self0 = time.monotonic(), self_cpu_s()
        self._sample(baseline=True)
        while not self._stop.wait(self.interval_s):
            self._sample(baseline=False)

    def start(self, at: float | None = None) -> CpuMeter:
        """Begin the window at monotonic time ``at`` (now if None)."""
        self._thread = threading.Thread(target=self._run, args=(at or time.monotonic(),), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Usage:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        if not self._first:
            raise RuntimeError("the CPU window never started")
        self._sample(baseline=False)
        by_role: dict[str, float] = defaultdict(float)
        procs: dict[str, int] = defaultdict(int)
        for key, first in self._first.items():
            role = self._roles[key]
            by_role[role] += self._last[key] - first
            procs[role] += 1
        return Usage(time.monotonic() - self._t0, dict(by_role), dict(procs), self_cpu_s() - self._self0)
