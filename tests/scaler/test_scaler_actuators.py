"""Actuators against recording stand-ins: the exact control calls, commands and signals they send.

In the style of Flower's tests/unit/api/test_control.py: the control object records each call and answers
the way a worker's mailbox does (``[{worker: {"ok": ...}}]`` or ``{"error": ...}``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
from typing import Any

import pytest

from scaler.actuators import (
    FIRST_WORKER_GRACE_S,
    REPLY_TIMEOUT_S,
    SETTLE_S,
    PoolActuator,
    ProcessActuator,
    reply_status,
)
from scaler.load_signal import WorkerView
from scaler.replicas import REPLICA_SETTLE_S, ComposeActuator, ExternalActuator

BUSY = 'ValueError("Can\'t shrink pool. All processes busy!")'


class RecordingControl:
    """Records pool_grow/pool_shrink calls; answers ok unless told otherwise per (command, worker)."""

    def __init__(self, answers: dict[tuple[str, str], Any] | None = None) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.answers = answers or {}

    def _answer(self, command: str, n: int, destination: list[str], **kwargs: Any) -> Any:
        self.calls.append((command, n, {"destination": destination, **kwargs}))
        worker = destination[0]
        answer = self.answers.get((command, worker), {"ok": f"pool will {command.split('_')[1]}"})
        return answer if isinstance(answer, list) else [{worker: answer}]

    def pool_grow(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self._answer("pool_grow", n, destination or [], **kwargs)

    def pool_shrink(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self._answer("pool_shrink", n, destination or [], **kwargs)


def call(command: str, n: int, worker: str) -> tuple[str, int, dict[str, Any]]:
    return (command, n, {"destination": [worker], "reply": True, "timeout": REPLY_TIMEOUT_S})


def wv(name: str, processes: int, busy: int = 0, host: str = "h1", updated: float = 100.0) -> WorkerView:
    return WorkerView(name, host, 1, processes, busy, updated)


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_reply_status_reads_ok_error_and_silence() -> None:
    assert reply_status([{"w": {"ok": "pool will grow"}}], "w") == (True, "pool will grow")
    assert reply_status([{"w": {"error": BUSY}}], "w") == (False, BUSY)
    assert reply_status([], "w")[0] is False
    assert reply_status([{"other": {"ok": "x"}}], "w")[0] is False


def test_grow_spreads_over_workers_and_hosts_smallest_first() -> None:
    control = RecordingControl()
    pool = PoolActuator(control, worker_max_procs=4, clock=Clock())
    workers = [wv("a@h1", 1, host="h1"), wv("b@h1", 1, host="h1"), wv("c@h2", 1, host="h2")]
    out = pool.apply(7, workers, "arrival_rate")
    # water-filling by pool size, then host total: c (alone on h2) first, then a and b, then c again (h2: 2 < 4)
    assert control.calls == [call("pool_grow", 2, "c@h2"), call("pool_grow", 1, "a@h1"), call("pool_grow", 1, "b@h1")]
    assert (out.changed, out.complete) == (4, True)
    assert pool.current(workers) == 7  # what was asked, until a later heartbeat says otherwise


def test_grow_stops_at_each_workers_cap_and_capacity_bounds_the_policy() -> None:
    control = RecordingControl()
    pool = PoolActuator(control, worker_max_procs=3, clock=Clock())
    workers = [wv("a@h", 2), wv("b@h", 3)]
    assert pool.capacity(workers) == 6
    out = pool.apply(8, workers, "backlog")
    assert control.calls == [call("pool_grow", 1, "a@h")]
    assert (out.changed, out.complete) == (1, False)


def test_a_refused_or_unanswered_grow_is_logged_with_its_reason_and_not_counted(caplog) -> None:
    control = RecordingControl({("pool_grow", "a@h"): {"error": "pool_grow is not supported with autoscale"}})
    pool = PoolActuator(control, worker_max_procs=4, clock=Clock())
    workers = [wv("a@h", 1)]
    with caplog.at_level(logging.WARNING, logger="scaler.actuators"):
        out = pool.apply(3, workers, "oldest_wait")
    assert (out.changed, out.complete) == (0, False)
    assert pool.current(workers) == 1
    assert "autoscale" in caplog.text and "reason oldest_wait" in caplog.text
    silent = RecordingControl({("pool_grow", "a@h"): []})  # the worker vanished: no reply within the timeout
    assert PoolActuator(silent, 4, clock=Clock()).apply(2, workers, "x").changed == 0


def test_shrink_takes_one_idle_process_from_the_most_idle_worker() -> None:
    control = RecordingControl()
    pool = PoolActuator(control, worker_max_procs=4, clock=Clock())
    workers = [wv("a@h", 3, busy=3), wv("b@h", 3, busy=1), wv("c@h", 1)]
    out = pool.apply(6, workers, "stabilised_down")
    assert control.calls == [call("pool_shrink", 1, "b@h")]
    assert (out.changed, out.complete) == (-1, True)


def test_no_second_shrink_to_a_worker_until_its_heartbeat_shows_the_first() -> None:
    clock, control = Clock(), RecordingControl()
    pool = PoolActuator(control, worker_max_procs=4, clock=clock)
    out = pool.apply(1, [wv("a@h", 3)], "stabilised_down")  # 3 -> 1 asked at once: one step only
    assert (control.calls, out.changed, out.complete) == ([call("pool_shrink", 1, "a@h")], -1, False)
    clock.t += 1
    assert pool.apply(1, [wv("a@h", 3)], "stabilised_down").changed == 0  # not reaped yet: wait
    assert len(control.calls) == 1
    clock.t += 4
    assert pool.apply(1, [wv("a@h", 2)], "stabilised_down").changed == -1  # shown: the next one goes
    assert control.calls[1:] == [call("pool_shrink", 1, "a@h")]


def test_shrink_drains_when_every_process_is_busy_and_never_empties_a_worker() -> None:
    control = RecordingControl({("pool_shrink", "a@h"): {"error": BUSY}, ("pool_shrink", "b@h"): {"error": BUSY}})
    pool = PoolActuator(control, worker_max_procs=4, clock=Clock())
    workers = [wv("a@h", 2, busy=2), wv("b@h", 2, busy=1), wv("c@h", 1)]
    out = pool.apply(3, workers, "stabilised_down")
    # b looked idler, both answered "all busy": nothing stopped, retried next tick; c (one process) untouched
    assert control.calls == [call("pool_shrink", 1, "b@h"), call("pool_shrink", 1, "a@h")]
    assert (out.changed, out.complete) == (0, False)
    assert pool.current(workers) == 5


def test_the_commanded_size_counts_until_a_heartbeat_shows_it_or_the_settle_time_passes() -> None:
    clock = Clock(100.0)
    pool = PoolActuator(RecordingControl(), worker_max_procs=8, clock=clock)
    pool.apply(4, [wv("a@h", 1)], "x")
    clock.t += 5
    assert pool.current([wv("a@h", 1)]) == 4  # prefork has not started them yet
    assert pool.current([wv("a@h", 4)]) == 4  # shown: from now on the heartbeat speaks
    assert pool.current([wv("a@h", 3)]) == 3  # (one died)
    pool.apply(6, [wv("a@h", 3)], "x")
    clock.t += SETTLE_S + 0.1
    assert pool.current([wv("a@h", 3)]) == 3  # never shown: the grow did not take


class FakePopen:
    def __init__(self, name: str, n: int, log: list) -> None:
        self.name, self.n, self.signals, self.returncode, self.pid = name, n, [], None, 4242
        log.append((name, n))

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = 0
        return 0

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)


def test_process_actuator_fills_pools_then_starts_workers_and_stops_its_own_first() -> None:
    control, launched, clock = RecordingControl(), [], Clock()
    popens: dict[str, FakePopen] = {}

    def launch(name: str, n: int) -> FakePopen:
        popens[name] = FakePopen(name, n, launched)
        return popens[name]

    act = ProcessActuator(PoolActuator(control, 2, clock=clock), "box", "work", launch, clock=clock)
    base = [wv("work@box", 1)]
    out = act.apply(5, base, "arrival_rate")
    assert control.calls == [call("pool_grow", 1, "work@box")]
    assert launched == [("work-s1@box", 2), ("work-s2@box", 1)]
    assert (out.changed, act.current(base)) == (4, 5)  # started workers count before their first heartbeat
    assert act.apply(5, base, "x").changed == 0  # and are not started twice
    beating = [wv("work@box", 2), wv("work-s1@box", 2), wv("work-s2@box", 1)]
    control.calls.clear()
    out = act.apply(2, beating, "stabilised_down")
    # s2 (one process) stops whole; then s1 loses an idle process, then stops whole
    assert popens["work-s2@box"].signals == [signal.SIGTERM]
    assert control.calls == [call("pool_shrink", 1, "work-s1@box")]
    assert popens["work-s1@box"].signals == [signal.SIGTERM]
    assert (out.changed, out.complete) == (-3, True)
    assert act.current(beating) == 2  # stopping workers no longer count, though still heartbeating
    act.close()
    assert all(p.returncode == 0 for p in popens.values())


def test_process_actuator_starts_no_worker_for_room_a_busy_pool_did_not_confirm() -> None:
    # Seen under load: the work worker's main process answered pool_grow after the 1 s timeout, and the
    # actuator started a second worker (another main process, its start-up CPU) for room the pool had.
    clock, launched = Clock(), []
    silent = RecordingControl({("pool_grow", "work@box"): []})
    act = ProcessActuator(
        PoolActuator(silent, 8, clock=clock), "box", "work", lambda n, k: FakePopen(n, k, launched), clock=clock
    )
    workers = [wv("work@box", 2, busy=2)]
    out = act.apply(8, workers, "arrival_rate")
    assert launched == [] and (out.changed, out.complete) == (0, False)
    assert act.current(workers) == 8  # the unanswered grow may have taken: trusted until a heartbeat says
    silent.calls.clear()
    assert act.apply(8, workers, "arrival_rate").changed == 0 and silent.calls == []  # not sent twice
    clock.t += SETTLE_S  # no heartbeat ever showed it: the grow is sent again, still no worker
    act.apply(8, workers, "arrival_rate")
    assert silent.calls == [call("pool_grow", 6, "work@box")] and launched == []
    refused = RecordingControl({("pool_grow", "work@box"): {"error": "busy"}})
    act = ProcessActuator(
        PoolActuator(refused, 8, clock=clock), "box", "work", lambda n, k: FakePopen(n, k, launched), clock=clock
    )
    assert act.apply(10, workers, "arrival_rate").changed == 2  # only what no pool has room for
    assert launched == [("work-s1@box", 2)] and act.current(workers) == 4


def test_process_actuator_waits_for_the_supervisors_worker_before_starting_one() -> None:
    clock, launched = Clock(), []
    act = ProcessActuator(
        PoolActuator(RecordingControl(), 2), "box", "work", lambda n, k: FakePopen(n, k, launched), clock=clock
    )
    assert act.apply(1, [], "at_min").changed == 0
    clock.t += FIRST_WORKER_GRACE_S
    assert act.apply(1, [], "at_min").changed == 1 and launched == [("work-s1@box", 1)]


def test_compose_actuator_runs_the_scale_command() -> None:
    ran: list[list[str]] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    act = ComposeActuator("worker", procs_per_replica=2, compose_file="deploy/compose.yml", run=run, clock=Clock())
    out = act.apply(5, [wv("work@c1", 2)], "arrival_rate")
    assert ran == [
        ["docker", "compose", "-f", "deploy/compose.yml", "up", "-d", "--no-recreate",
         "--scale", "worker=3", "--no-deps", "worker"],
    ]  # fmt: skip
    assert (out.changed, out.complete, act.current([])) == (4, True, 6)
    assert ComposeActuator("worker", 1).command(4)[:7] == [
        "docker",
        "compose",
        "up",
        "-d",
        "--no-recreate",
        "--scale",
        "worker=4",
    ]


def test_compose_failure_is_reported_and_retried(caplog) -> None:
    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "", "Cannot connect to the Docker daemon")

    act = ComposeActuator("worker", 1, run=run, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="scaler.actuators"):
        out = act.apply(3, [wv("work@c1", 1)], "backlog")
    assert (out.changed, out.complete) == (0, False)
    assert "Docker daemon" in caplog.text and "reason backlog" in caplog.text
    assert act.current([wv("work@c1", 1)]) == 1


@pytest.mark.parametrize("missing", [FileNotFoundError("docker"), subprocess.TimeoutExpired("docker", 120)])
def test_compose_without_docker_does_not_crash(missing: Exception) -> None:
    def run(argv: list[str]) -> subprocess.CompletedProcess:
        raise missing

    assert ComposeActuator("worker", 1, run=run).apply(2, [], "x").complete is False


def test_external_actuator_only_records_the_target_for_the_platform() -> None:
    clock = Clock()
    act = ExternalActuator(clock=clock)
    assert act.capacity([wv("work-abc@pod1", 2)]) is None
    out = act.apply(6, [wv("work-abc@pod1", 2)], "arrival_rate")
    assert (out.changed, out.complete) == (4, True)
    assert act.current([wv("work-abc@pod1", 2)]) == 6  # pods are starting
    clock.t += REPLICA_SETTLE_S + 1
    assert act.current([wv("work-abc@pod1", 2)]) == 2  # they never came: the heartbeats speak again
