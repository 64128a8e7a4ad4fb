"""Running the HTTP API: one uvicorn process, or several behind one port.

One API process is the first part of the stack to fill a core at saturation (wrk, one-row predicts on 2
cores: the API at 99 % of a core, the online worker at a tenth), so ``INFERPOOL_API_PROCESSES`` (default 2
where there are 2 cores) runs more. Each listens on a socket of its own with ``SO_REUSEPORT``, and the kernel
spreads new connections over them by address. Not uvicorn's ``--workers``: its processes share one socket,
and the one that wakes first accepts every connection waiting, so a client opening its keep-alive
connections at once often lands all of them on one process. Where ``SO_REUSEPORT`` does not balance
(outside Linux), the processes share one socket that way instead.

The parent only supervises: it starts the processes, starts again one that dies (after a pause that grows
while they keep dying), and passes SIGTERM or SIGINT on. Each server dies with the parent
(``PR_SET_PDEATHSIG``), so a parent killed outright leaves no process holding the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from inferpool import telemetry

logger = logging.getLogger(__name__)

APP = "api.app:create_app"
# Restart pauses: doubling from the first up to the last while processes keep dying within STABLE_S.
RESTART_PAUSE_S = (0.5, 10.0)
STABLE_S = 30.0
STOP_TIMEOUT_S = 10.0
BACKLOG = 2048
PR_SET_PDEATHSIG = 1


def balanced_reuse_port() -> bool:
    """Whether separate SO_REUSEPORT sockets share out connections here (Linux); elsewhere the last bound wins."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def uvicorn_options(log_json: bool) -> dict[str, Any]:
    # With JSON logs uvicorn keeps no handlers of its own: its records reach the app's JSON handler.
    return {
        "factory": True,
        "access_log": False,  # ~20% of the per-request CPU; request metrics cover it
        "log_level": "warning",
        **({"log_config": None} if log_json else {}),
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": 30,
    }


def serve_one(host: str, port: int, log_json: bool) -> None:
    """The API in this process, on a socket of its own."""
    import uvicorn

    uvicorn.run(APP, host=host, port=port, **uvicorn_options(log_json))


def serve_child(host: str, port: int, log_json: bool, fd: int | None) -> None:
    """One of several API processes: on its own SO_REUSEPORT socket, or on the parent's (``fd``)."""
    import uvicorn

    if fd is not None:
        uvicorn.run(APP, fd=fd, **uvicorn_options(log_json))
        return
    sock = listen_socket(host, port, reuse_port=True)
    uvicorn.Server(uvicorn.Config(APP, **uvicorn_options(log_json))).run(sockets=[sock])


def _die_with_parent(parent: int) -> None:
    """Runs in the forked child before exec: the server gets SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent went before the signal was armed
        os._exit(0)


@dataclass
class ApiProcesses:
    """N API servers on one port, kept at N until stopped."""

    host: str
    port: int
    count: int
    _procs: list[subprocess.Popen | None] = field(default_factory=list)
    _started_at: list[float] = field(default_factory=list)
    _pauses: list[float] = field(default_factory=list)
    _shared: socket.socket | None = None
    _stopping: bool = False

    def __post_init__(self) -> None:
        if not balanced_reuse_port():
            self._shared = listen_socket(self.host, self.port, reuse_port=False)
        else:
            # Fail here, once, with the usual error, if the port is taken by something that is not ours.
            listen_socket(self.host, self.port, reuse_port=True).close()

    def _argv(self) -> list[str]:
        if self._shared is not None:
            where = ["--fd", str(self._shared.fileno())]
        else:
            where = ["--host", self.host, "--port", str(self.port)]
        return [sys.executable, "-m", "cli.main", "api", "--child-of", str(os.getpid()), *where]

    def _start(self, i: int) -> None:
        parent = os.getpid()
        fds = (self._shared.fileno(),) if self._shared else ()
        self._procs[i] = subprocess.Popen(self._argv(), pass_fds=fds, preexec_fn=lambda: _die_with_parent(parent))
        self._started_at[i] = time.monotonic()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._procs = [None] * self.count
        self._started_at = [0.0] * self.count
        self._pauses = [0.0] * self.count
        for i in range(self.count):
            self._start(i)
        while not self._stopping:
            self._keep_up()
            time.sleep(0.2)
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _keep_up(self) -> None:
        now = time.monotonic()
        for i, proc in enumerate(self._procs):
            if proc is None or proc.poll() is None:
                continue
            stable = now - self._started_at[i] >= STABLE_S
            first, last = RESTART_PAUSE_S
            self._pauses[i] = first if stable or not self._pauses[i] else min(last, self._pauses[i] * 2)
            pause = self._pauses[i]
            logger.error("API process %s exited with %s; starting another in %.1f s", proc.pid, proc.returncode, pause)
            telemetry.process_dead(proc.pid)
            self._procs[i] = None
            self._wait(pause)
            if not self._stopping:
                self._start(i)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            time.sleep(0.1)

    def _stop_all(self) -> int:
        live = [p for p in self._procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return 0


def serve(host: str, port: int, processes: int, log_json: bool) -> int:
    """Run the API until stopped: in this process when ``processes`` is 1, else supervised children."""
    if processes <= 1:
        serve_one(host, port, log_json)
        return 0
    return ApiProcesses(host, port, processes).run()
