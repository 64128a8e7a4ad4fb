"""A second "host" on this machine: a Linux network namespace joined to this one by a veth pair.

The host side of the pair gets ``10.231.N.1/30``, the namespace side ``10.231.N.2/30``, with ``N`` chosen
so the /30 is not already on an interface or in a route here. Names carry the test's pid and a random
suffix, so a leftover from a killed run never collides with the next; ``remove()`` deletes both (deleting
the namespace takes its end of the pair, and the pair with it) and is safe to call twice.

Processes run inside with ``ip netns exec NS unshare --uts``, under a hostname of their own: what
``socket.gethostname()`` and Celery's ``%h`` say there is the second host's name, as on a real machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass

SUBNET_PREFIX = "10.231"  # a /16 private block; one /30 of it per run
IP_TIMEOUT_S = 10.0


class NamespaceRefused(RuntimeError):
    """Raised when this machine will not make a network namespace (not root, no ``ip``, EPERM)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise NamespaceRefused(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def why_not() -> str | None:
    """The reason namespaces cannot be made here, or None when they can be tried."""
    if os.geteuid() != 0:
        return f"network namespaces need root (ip netns add); running as uid {os.geteuid()}"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command on PATH (apt-get install iproute2 util-linux hostname)"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    nets = []
    for word in out.split():
        with contextlib.suppress(ValueError):
            if "/" in word:
                nets.append(ipaddress.ip_network(word, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of ``10.231.0.0/16`` that overlaps nothing configured here, picked at random."""
    used = _used_networks()
    for _ in range(64):
        net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NamespaceRefused(f"no free /30 in {SUBNET_PREFIX}.0.0/16")


def _running(pid: int) -> bool:
    """False once ``pid`` is gone or a zombie (killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class Namespace:
    name: str
    host_if: str
    ns_if: str
    host_addr: str  # this machine's end: Redis, the API and Flower listen here
    ns_addr: str  # the second host's address
    hostname: str  # the second host's name (UTS namespace of each process started inside)

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run inside the namespace, under the second host's hostname."""
        inner = f"hostname {shlex.quote(self.hostname)} && exec {shlex.join(command)}"
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "sh", "-c", inner]

    def pids(self) -> list[int]:
        """Every process in the namespace (whatever started it) that is still running: not a zombie."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if _running(int(p))]

    def kill_all(self) -> list[int]:
        """The host is lost: SIGKILL every process in it at once; returns their pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def remove(self) -> None:
        self.kill_all()
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_if, check=False)  # gone with the namespace already, unless that failed


def create() -> Namespace:
    """Make the namespace, the veth pair and both addresses; undo what was made if a step fails."""
    reason = why_not()
    if reason:
        raise NamespaceRefused(reason)
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(2)}"
    net = free_subnet()
    host_addr, ns_addr = (str(a) for a in net.hosts())
    ns = Namespace(f"ipns{tag}", f"iph{tag}", f"ipn{tag}", host_addr, ns_addr, f"hostb-{tag}")
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _ip("link", "set", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{host_addr}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        inside = ("netns", "exec", ns.name, "ip")
        _ip(*inside, "addr", "add", f"{ns_addr}/30", "dev", ns.ns_if)
        _ip(*inside, "link", "set", ns.ns_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        probe = subprocess.run(ns.argv(["hostname"]), capture_output=True, text=True, timeout=IP_TIMEOUT_S)
        if probe.stdout.strip() != ns.hostname:
            raise NamespaceRefused(f"cannot set a hostname inside (unshare --uts): {probe.stderr.strip()}")
    except (NamespaceRefused, OSError, subprocess.TimeoutExpired) as exc:
        ns.remove()
        raise NamespaceRefused(str(exc)) from exc
    return ns
