"""Where the CPU goes: per-role CPU seconds of this machine's processes, read from /proc.

A profile for the benchmark table: how many CPU-milliseconds one request (or one burst) costs in the
API, each worker role, Redis and the load client itself, all sharing the same 2 cores.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
ROLES = (
    ("api", ("inferpool.cli api",)),
    ("worker online", ("-Q inferpool.online",)),
    ("worker work", ("-Q inferpool.work",)),
    ("redis", ("redis-server",)),
    ("reference server", ("bench.reference_server",)),
)


def _role(cmdline: str, pid: int) -> str | None:
    if pid == os.getpid():
        return "load client"
    for role, needles in ROLES:
        if any(n in cmdline for n in needles):
            return role
    return None


def snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's live processes, children of prefork included."""
    out: dict[str, float] = defaultdict(float)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = _role(cmdline, int(d.name))
        if role:
            out[role] += (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return dict(out)


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in sorted(set(before) | set(after))}
