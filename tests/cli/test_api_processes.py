"""Several API processes behind one port (``inferpool api --processes N``, cli/api_server.py): connections
spread over them, a process that dies is replaced, and none outlives its parent."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from cli.api_server import listen_socket
from tests.support.waiting import wait_until

ESTABLISHED, LISTEN = "01", "0A"


def _inodes(port: int, state: str) -> set[str]:
    """Socket inodes of TCP sockets in ``state`` whose local port is ``port`` (the server's ends)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state:
                inodes.add(f[9])
    return inodes


def _holders(pids: list[int], inodes: set[str]) -> set[int]:
    """Which of ``pids`` hold one of these sockets open."""
    found = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.add(pid)
                break
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _port_free(port: int) -> bool:
    try:
        listen_socket("127.0.0.1", port, reuse_port=False).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT is Linux's")
@pytest.mark.timeout(120)
def test_two_api_processes_share_the_port_and_are_kept_at_two(stack_factory, reference_model):
    st = stack_factory()
    st.start_worker("online", concurrency=1)
    url = st.start_api(INFERPOOL_API_PROCESSES="2")
    api = st.procs[-1]
    port = int(url.rsplit(":", 1)[1])
    wait_until(lambda: len(api.children()) == 2, 20, "two API processes")
    children = api.children()
    wait_until(lambda: _holders(children, _inodes(port, LISTEN)) == set(children), 30, "both listening")

    # Connections opened at once, as a load client opens its pool, land on both processes.
    rng = np.random.default_rng(7)
    X = rng.normal(size=(24, 20))
    clients = [httpx.Client(base_url=url, timeout=30) for _ in X]
    try:
        answers = [c.post("/predict", json={"X": row.tolist()}) for c, row in zip(clients, X, strict=True)]
        assert [a.status_code for a in answers] == [200] * len(X), [a.text for a in answers if a.status_code != 200]
        assert [a.json()["prediction"] for a in answers] == reference_model.predict(X).tolist()
        assert _holders(children, _inodes(port, ESTABLISHED)) == set(children)
    finally:
        for c in clients:
            c.close()

    # One killed outright is replaced; the other goes on answering meanwhile.
    os.kill(children[0], signal.SIGKILL)
    wait_until(lambda: len(api.children()) == 2 and children[0] not in api.children(), 20, "a replacement")
    r = httpx.post(f"{url}/predict", json={"X": X[0].tolist()}, timeout=30)
    assert r.status_code == 200 and r.json()["prediction"] == int(reference_model.predict(X[:1])[0])
    assert "API process" in api.log.read_text()  # the parent said which one died

    # The parent killed outright takes its processes with it: nothing holds the port.
    children = api.children()
    api.popen.kill()
    api.popen.wait()
    wait_until(lambda: not any(_alive(p) for p in children), 20, "the API processes end with their parent")
    wait_until(lambda: _port_free(port), 10, "the port is free again")


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT is Linux's")
@pytest.mark.timeout(90)
def test_sigterm_stops_every_api_process(stack_factory):
    st = stack_factory()
    url = st.start_api(INFERPOOL_API_PROCESSES="2")
    api = st.procs[-1]
    wait_until(lambda: len(api.children()) == 2, 20, "two API processes")
    children = api.children()
    api.popen.send_signal(signal.SIGTERM)
    assert api.popen.wait(20) == 0
    assert not any(_alive(p) for p in children)
    assert _port_free(int(url.rsplit(":", 1)[1]))
