"""A second host, for real: a network namespace joined by a veth pair, with its own address and hostname.

This machine ("host A", its own hostname) runs Redis, the API, Flower and the scaler, all listening on the
host end of the pair (never loopback), plus one online and one work worker. The namespace ("host B",
``hostb-<tag>``) runs another online and another work worker, reaching Redis over the pair. Through it:

* nothing assumes loopback: workers' metrics endpoints bind where they run and advertise an address the
  other host reaches, the scaler's ``/targets`` hands those to Prometheus, the API and Flower answer
  from the second host, Flower's links are relative;
* the scaler grows and shrinks the pools of both hosts (``pool_grow``/``pool_shrink``) and spreads
  processes over them; Flower, in headless Chromium, lists both hosts' workers and shows the change;
* the load-test report opens in the same browser with every chart drawn;
* host B lost mid-load (every process in the namespace SIGKILLed): its unacked messages come back after
  the visibility timeout, the scaler grows host A, every accepted job succeeds, the ledger balances. The
  time to recover is printed with the machine's loop speed.

Skips, naming the reason, where namespaces cannot be made (not root, no ``ip``/``unshare``, EPERM);
the browser checks skip where Playwright or Chromium is missing (``make tools`` installs Debian's).
Traffic goes only to the pair's two addresses, bounded in count and time. ``make second-host`` runs
this module verbosely with its report.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import redis

from bench.loadgen import machine_speed
from cli.local_redis import free_port
from inferpool import keys, queues
from inferpool.settings import Settings
from tests.conftest import base_env
from tests.support import netns
from tests.support.bounded_load import BoundedLoad, rows
from tests.support.jobs import wait_job
from tests.support.reachable_redis import ReachableRedis
from tests.support.waiting import wait_until
from workers.app import make_app
from workers.metrics_server import advertised_host, loopback_only

FLOWER_USER, FLOWER_PASSWORD = "ops", "second-host-pw"
START_TIMEOUT_S = 90.0  # a loaded 2-core machine starts 8 processes at once slowly
CHUNK_ROWS = 200
# A lost host's messages come back after 8 s; tasks end within 7 s (see tests/e2e/test_chaos.py).
FAST_DELIVERY = {
    "INFERPOOL_VISIBILITY_TIMEOUT_S": "8",
    "INFERPOOL_TASK_TIME_LIMIT_S": "7",
    "INFERPOOL_RESTORE_INTERVAL_S": "1",
    "INFERPOOL_REDISPATCH_INTERVAL_S": "1",
    "INFERPOOL_JOB_CHUNK_ROWS": str(CHUNK_ROWS),
}
# The scaler: 2..4 work processes over both hosts, quick to act and to settle, so a shrink shows in seconds.
SCALER_MIN, SCALER_MAX = 2, 4
SCALER = {
    "INFERPOOL_SCALER_SCALE_DOWN_WINDOW_S": "6",
    "INFERPOOL_SCALER_COOLDOWN_S": "1",
    "INFERPOOL_SCALER_WORKER_MAX_PROCS": str(SCALER_MAX),
}
LOAD_BEFORE_KILL_S = 3.0
LOOPBACK = re.compile(r"\b(127\.\d+\.\d+\.\d+|localhost)\b")

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # slow: `make test-long`


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


@dataclass
class TwoHosts:
    ns: netns.Namespace
    redis: ReachableRedis
    env: dict[str, str]
    out: Path  # the module's output directory: logs, screenshots, the report
    host_a: str
    nodes: dict[str, str] = field(default_factory=dict)  # "work-a", "work-b", ... -> Celery node name
    procs: list[Started] = field(default_factory=list)
    api_url: str = ""
    flower_url: str = ""
    exporter_url: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Started:
        log = self.out / f"{name}.log"
        popen = subprocess.Popen(argv, env=env or self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        started = Started(name, popen, log)
        self.procs.append(started)
        return started

    def heartbeat(self, node: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(keys.worker(node)).items()}

    def processes(self, key: str) -> int:
        return int(self.heartbeat(self.nodes[key]).get("processes", 0))

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in self.procs:
            try:
                p.popen.wait(15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def _wait_http(url: str, proc: Started, auth: tuple[str, str] | None = None) -> None:
    def up() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited: {proc.tail()}"
        try:
            return httpx.get(url, timeout=1, auth=auth).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, START_TIMEOUT_S, f"{proc.name} at {url}", every=0.2)


def _start_worker(h: TwoHosts, key: str, role: str, on_b: bool) -> tuple[str, Started]:
    """A worker named ``role-x@%h``: Celery puts the hostname of where it runs (host A's or B's) in its name."""
    node = f"{key}@{h.ns.hostname if on_b else h.host_a}"
    argv = _cli("worker", "--role", role, "-c", "1", "--name", f"{key}@%h")
    env = h.env
    if on_b:  # another machine: its own metrics directory; same code and model files (a shared image)
        metrics = h.out / "metrics-b"
        metrics.mkdir(exist_ok=True)
        env = {**h.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        argv = h.ns.argv(argv)
    h.nodes[key] = node
    return node, h.spawn(key, argv, env)


def _wait_workers(h: TwoHosts, started: list[tuple[str, Started]]) -> None:
    for node, proc in started:
        wait_until(
            lambda node=node, proc=proc: proc.popen.poll() is None and bool(h.client.zscore(keys.WORKERS, node)),
            START_TIMEOUT_S,
            f"worker {node} to heartbeat ({proc.log})",
        )


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, model_dir) -> Iterator[TwoHosts]:
    reason = netns.why_not()
    if reason:
        pytest.skip(f"no second host: {reason}")
    try:
        ns = netns.create()
    except netns.NamespaceRefused as exc:
        pytest.skip(f"no second host: {exc}")
    out = tmp_path_factory.mktemp("second-host")
    srv: ReachableRedis | None = None
    h: TwoHosts | None = None
    try:
        # Reachable from another host, so protected by a password (protected mode refuses others without one).
        srv = ReachableRedis(out / "redis", aof=True, host=ns.host_addr).start()
        (out / "metrics-a").mkdir()
        env = base_env(
            srv.url, model_dir, out / "metrics-a", **FAST_DELIVERY, **SCALER,
            # Workers bind their metrics on every interface and advertise the one that reaches Redis.
            INFERPOOL_API_HOST="0.0.0.0", INFERPOOL_WORKER_METRICS_PORT="0",
            INFERPOOL_SCALER_METRICS_HOST=ns.host_addr, INFERPOOL_SCALER_METRICS_PORT=str(free_port()),
            INFERPOOL_FLOWER_USER=FLOWER_USER, INFERPOOL_FLOWER_PASSWORD=FLOWER_PASSWORD,
            INFERPOOL_PREDICT_MAX_WAIT_S="5",
        )  # fmt: skip
        h = TwoHosts(ns, srv, env, out, socket.gethostname())
        # Everything starts at once (a loaded 2-core machine takes seconds per process), then is waited for.
        workers = [
            _start_worker(h, "online-a", "online", on_b=False),
            _start_worker(h, "work-a", "work", on_b=False),
            _start_worker(h, "online-b", "online", on_b=True),
            _start_worker(h, "work-b", "work", on_b=True),
        ]
        port = free_port()
        api = h.spawn("api", _cli("api", "--host", ns.host_addr, "--port", str(port)))
        h.api_url = f"http://{ns.host_addr}:{port}"
        port = free_port()
        flower = h.spawn("flower", _cli("flower", "--address", ns.host_addr, "--port", str(port)))
        h.flower_url = f"http://{ns.host_addr}:{port}"
        scaler_argv = _cli("scaler", "--actuator", "celery", "--min", str(SCALER_MIN), "--max", str(SCALER_MAX))
        # INFO: every pool command it sends is logged with its target worker (what the scaler test reads).
        scaler = h.spawn("scaler", scaler_argv, {**env, "INFERPOOL_LOG_LEVEL": "INFO"})
        h.exporter_url = f"http://{ns.host_addr}:{env['INFERPOOL_SCALER_METRICS_PORT']}"
        _wait_workers(h, workers)
        _wait_http(f"{h.api_url}/readyz", api)
        _wait_http(f"{h.flower_url}/healthcheck", flower)
        _wait_http(f"{h.exporter_url}/targets", scaler)
        yield h
    finally:
        if h is not None:
            h.stop()
            if h.report:
                path = out / "second-host-report.json"
                path.write_text(json.dumps(h.report, indent=2))
                print(f"\nsecond host report: {path}\n{json.dumps(h.report, indent=2)}")
        if srv is not None:
            srv.stop(kill=True)
        ns.remove()


@pytest.fixture(scope="module")
def browser(two_hosts) -> Iterator[Any]:
    """Headless Chromium through Playwright: Debian's build (``make tools``) where installed, else Playwright's."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        except sync_api.Error as exc:
            pytest.skip(f"no Chromium to drive (`make tools` installs Debian's chromium): {exc.message[:200]}")
        yield b
        b.close()


def _in_b(h: TwoHosts, url: str, auth: bool = False) -> int:
    """Status of GET ``url`` asked from inside the second host."""
    code = "import httpx, sys; a = tuple(sys.argv[2:4]) or None; print(httpx.get(sys.argv[1], auth=a).status_code)"
    extra = [FLOWER_USER, FLOWER_PASSWORD] if auth else []
    done = subprocess.run(
        h.ns.argv([sys.executable, "-c", code, url, *extra]), capture_output=True, text=True, timeout=30, env=h.env
    )
    assert done.returncode == 0, done.stderr[-1000:]
    return int(done.stdout.strip())


def test_listen_and_advertised_addresses_reach_across_hosts(two_hosts):
    h = two_hosts
    beats = {key: h.heartbeat(node) for key, node in h.nodes.items()}
    for key, beat in beats.items():
        on_b = key.endswith("-b")
        assert beat["host"] == (h.ns.hostname if on_b else h.host_a), (key, beat)
        # Bound on 0.0.0.0, each advertises the address of the interface that reaches Redis.
        assert beat["metrics"].startswith(f"{h.ns.ns_addr if on_b else h.ns.host_addr}:"), (key, beat)
        assert not LOOPBACK.search(beat["metrics"])
        # Scraped from host A, as Prometheus would.
        scrape = httpx.get(f"http://{beat['metrics']}/metrics", timeout=5)
        assert scrape.status_code == 200 and "inferpool_" in scrape.text, key
    targets = httpx.get(f"{h.exporter_url}/targets", timeout=5).json()
    assert {t["targets"][0] for t in targets} == {b["metrics"] for b in beats.values()}, targets

    # Celery's control API sees both hosts' workers by name.
    control = make_app(Settings(redis_url=h.redis.url)).control
    stats = control.inspect(timeout=2.0).stats() or {}
    assert set(h.nodes.values()) <= set(stats), sorted(stats)

    # The second host reaches the API, Flower and the scaler's exporter on host A's address.
    assert _in_b(h, f"{h.api_url}/readyz") == 200
    assert _in_b(h, f"{h.flower_url}/api/workers", auth=True) == 200
    assert _in_b(h, f"{h.exporter_url}/targets") == 200
    X = rows(3, seed=7)
    r = httpx.post(f"{h.api_url}/v1/predict", json={"instances": X.tolist()}, timeout=15)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    h.report["addresses"] = {
        "host_a": {"name": h.host_a, "address": h.ns.host_addr},
        "host_b": {"name": h.ns.hostname, "address": h.ns.ns_addr, "namespace": h.ns.name},
        "api": h.api_url, "flower": h.flower_url, "exporter": h.exporter_url,
        "worker_metrics": {h.nodes[k]: b["metrics"] for k, b in beats.items()},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("bind", "redis_url", "warned"),
    [
        ("127.0.0.1", "redis://10.0.0.5:6379/0", True),  # the default bind, Redis on another host
        ("127.0.0.1", "redis://127.0.0.1:6379/0", False),  # one machine: loopback is all there is
        ("localhost", "redis://redis.internal:6379/0", True),
        ("10.0.0.7", "redis://10.0.0.5:6379/0", False),
    ],
)
def test_a_worker_warns_when_its_metrics_are_loopback_only(bind, redis_url, warned):
    assert loopback_only(advertised_host(bind, redis_url), redis_url) is warned


def test_no_root_no_namespace_and_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "need root" in (netns.why_not() or "")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "ip" else f"/usr/bin/{tool}")
    assert "`ip`" in (netns.why_not() or "")


def _flower_login(browser: Any, h: TwoHosts) -> Any:
    context = browser.new_context(http_credentials={"username": FLOWER_USER, "password": FLOWER_PASSWORD})
    return context.new_page()


def _flower_processes(page: Any, h: TwoHosts, node: str) -> int:
    """Pool processes of ``node`` as Flower's worker page shows them (it asks the worker when opened)."""
    page.goto(f"{h.flower_url}/worker/{node}", wait_until="domcontentloaded")
    row = page.locator("#tab-pool tr", has_text="Processes")
    if not row.count():  # the worker did not answer Flower's inspect in time (a loaded host): none shown
        return 0
    return len(re.findall(r"\d+", row.first.locator("td").nth(1).inner_text()))


def test_flower_in_a_browser_lists_both_hosts_with_relative_links(two_hosts, browser):
    h = two_hosts
    anonymous = browser.new_context()
    assert anonymous.request.get(f"{h.flower_url}/workers").status == 401  # basic auth, always
    anonymous.close()
    page = _flower_login(browser, h)

    # The table is filled and refreshed by the page's script from Flower's event state: load once, then watch.
    page.goto(f"{h.flower_url}/workers", wait_until="load")

    seen: list[str] = []

    def listed() -> bool:
        seen[:] = [node for node in h.nodes.values() if page.get_by_text(node, exact=True).count()]
        return len(seen) == len(h.nodes)

    shot = h.out / "flower-workers.png"
    try:
        wait_until(listed, 30, f"Flower to list the workers of both hosts (seen: {seen})", every=1.0)
    finally:
        page.screenshot(path=str(shot), full_page=True)
    hrefs = page.eval_on_selector_all("a[href], link[href], script[src]", "els => els.map(e => e.href || e.src)")
    assert hrefs and not [u for u in hrefs if LOOPBACK.search(u)], hrefs
    own = [u for u in hrefs if u.startswith("http") and "/worker/" in u]
    assert {unquote(u.rsplit("/", 1)[-1]) for u in own} >= set(h.nodes.values()), own
    assert all(u.startswith(h.flower_url) for u in own), own  # links follow the address Flower was opened at
    h.report.setdefault("screenshots", []).append(str(shot))
    print(f"\nscreenshot: {shot}")
    page.context.close()


SCALER_COMMAND = re.compile(r"(pool_grow|pool_shrink)\((\d+)\) on (\S+): ")


def _scaler_commands(h: TwoHosts) -> dict[str, dict[str, int]]:
    """Processes added and removed per worker, from the scaler's log of acknowledged pool commands."""
    out: dict[str, dict[str, int]] = {"pool_grow": {}, "pool_shrink": {}}
    for command, n, node in SCALER_COMMAND.findall((h.out / "scaler.log").read_text(errors="replace")):
        out[command][node] = out[command].get(node, 0) + int(n)
    return out


def test_scaler_grows_and_shrinks_both_hosts_and_flower_shows_it(two_hosts, browser):
    h = two_hosts
    page = _flower_login(browser, h)
    before: dict[str, int] = {}

    def settled() -> bool:
        before.update({k: h.processes(k) for k in ("work-a", "work-b")})
        return before == {"work-a": 1, "work-b": 1}

    # The scaler's minimum (2), one on each host. At start it may have seen one host's worker first and grown
    # the other to the minimum, then shrunk it back once both beat: wait for the settled pool, not the start.
    wait_until(settled, 30, "one process on each host, the scaler's minimum")
    wait_until(lambda: _flower_processes(page, h, h.nodes["work-b"]) == 1, 20, "Flower to show host B's one process")
    first = h.out / "flower-host-b-before.png"
    page.screenshot(path=str(first), full_page=True)

    # ~8 tasks/s holding a process 0.4 s each (~3.2 busy): the scaler's maximum, 4, spread 2 + 2.
    load = BoundedLoad(h.api_url, kinds=((10, 400),), interval_s=0.125, max_requests=120).start()
    t0 = time.monotonic()
    peak: dict[str, int] = {}
    try:

        def spread() -> bool:
            sizes = {k: h.processes(k) for k in before}
            peak.update({k: max(peak.get(k, 0), v) for k, v in sizes.items()})
            return all(v >= 2 for v in sizes.values())

        wait_until(spread, 40, "the scaler to grow the pools on both hosts", every=0.3)
        grown_s = time.monotonic() - t0
        wait_until(
            lambda: _flower_processes(page, h, h.nodes["work-b"]) >= 2, 20, "Flower to show host B's pool grown", 1.0
        )
        shot = h.out / "flower-host-b-after-grow.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        load.stop()
    t1 = time.monotonic()
    wait_until(lambda: all(h.processes(k) == 1 for k in before), 60, "the scaler to shrink both pools back", 0.5)
    shrunk_s = time.monotonic() - t1
    assert {s.status for s in load.submitted} <= {202, 429}, {s.status for s in load.submitted}
    assert all(wait_job(httpx.Client(base_url=h.api_url), s.job_id)["status"] == "succeeded" for s in load.accepted)
    # The changes were the scaler's: its remote-control commands, acknowledged by each host's worker.
    commands = _scaler_commands(h)
    for command in ("pool_grow", "pool_shrink"):
        assert {h.nodes["work-a"], h.nodes["work-b"]} <= set(commands[command]), commands
    h.report["scaler"] = {
        "processes_before": before, "peak": peak, "grown_on_both_hosts_after_s": round(grown_s, 1),
        "shrunk_back_after_load_s": round(shrunk_s, 1), "jobs_accepted": len(load.accepted),
        "commands_acknowledged": commands,
    }  # fmt: skip
    h.report.setdefault("screenshots", []).extend([str(first), str(shot)])
    print(f"\nscreenshots: {first} {shot}")
    page.context.close()


def test_loadtest_report_opens_with_every_chart(two_hosts, browser):
    from loadtest.report import CHARTS

    h = two_hosts
    out = h.out / "loadtest"
    argv = _cli("loadtest", "--url", h.api_url, "--rate", "8", "--duration", "5", "--seed", "3")
    done = subprocess.run([*argv, "--plot", "--out", str(out), "--quiet"], env=h.env, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "report.html").as_uri(), wait_until="load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert len(widths) >= len(CHARTS), widths
    assert all(w > 0 for _, w in widths), widths
    assert not errors, errors
    shot = h.out / "loadtest-report.png"
    page.screenshot(path=str(shot), full_page=True)
    h.report.setdefault("screenshots", []).append(str(shot))
    print(f"\nscreenshot: {shot}")
    page.close()


def _ledger(h: TwoHosts) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in h.client.hgetall(keys.LEDGER).items()}


def test_host_b_lost_mid_load_loses_nothing(two_hosts, reference_model):
    h = two_hosts
    ledger_before = _ledger(h)
    # Half the jobs are one work task holding a process 0.5 s, half are 2 chunks for the online workers.
    load = BoundedLoad(h.api_url, kinds=((10, 500), (2 * CHUNK_ROWS, 0)), interval_s=0.1, max_requests=200)
    load.seed0 = 50_000
    load.start()
    try:
        # Kill mid-load: after LOAD_BEFORE_KILL_S of it, once host B's work worker is grown and busy.
        time.sleep(LOAD_BEFORE_KILL_S)
        wait_until(
            lambda: int(h.heartbeat(h.nodes["work-b"]).get("busy", 0)) > 0 and h.processes("work-b") >= 2,
            40,
            "host B's work worker to be busy and grown",
            every=0.1,
        )
        before = {k: h.processes(k) for k in ("work-a", "work-b")}
        accepted_before_kill = [s.job_id for s in load.accepted]
        killed = h.ns.kill_all()
        killed_at, killed_epoch = time.monotonic(), time.time()
        assert killed
        wait_until(lambda: not h.ns.pids(), 5, "every process of host B to be gone", every=0.05)

        capacity_s: float | None = None
        a_peak = before["work-a"]
        while time.monotonic() - killed_at < 40:
            a_peak = max(a_peak, h.processes("work-a"))
            if a_peak >= min(SCALER_MAX, sum(before.values())):
                capacity_s = time.monotonic() - killed_at
                break
            time.sleep(0.2)
    finally:
        load.stop()
    with httpx.Client(base_url=h.api_url, timeout=15) as c:
        views = {s.job_id: wait_job(c, s.job_id, timeout_s=60) for s in load.accepted}
    # The work's recovery: when the last job accepted before the kill finished (its own finish time).
    work_s = max(views[j]["timings"]["finished"] for j in accepted_before_kill) - killed_epoch

    def drained() -> bool:
        led, snap = _ledger(h), queues.snapshot(h.client)
        return led["accepted"] == led.get("succeeded", 0) + led.get("failed", 0) and not (snap.depth or snap.unacked)

    wait_until(drained, 60, "the ledger to balance and the queues to drain")
    led = {k: v - ledger_before.get(k, 0) for k, v in _ledger(h).items()}
    wrong = [
        s.job_id
        for s in load.accepted
        if views[s.job_id]["predictions"] != reference_model.predict(rows(s.n, s.seed)).tolist()
    ]
    statuses = sorted({s.status for s in load.submitted})
    figures = {
        "processes_before_kill": before,
        "processes_killed": len(killed),
        "jobs_accepted": len(load.accepted),
        "jobs_accepted_before_kill": len(accepted_before_kill),
        "statuses": statuses,
        "ledger_delta": led,
        "host_a_work_processes_peak": a_peak,
        "scaler_commands_total": _scaler_commands(h),
        "capacity_replaced_on_host_a_s": None if capacity_s is None else round(capacity_s, 1),
        "work_of_the_lost_host_done_s": round(work_s, 1),
        "full_recovery_s": round(max(work_s, capacity_s or 0.0), 1) if capacity_s is not None else None,
        "visibility_timeout_s": int(FAST_DELIVERY["INFERPOOL_VISIBILITY_TIMEOUT_S"]),
        "python_loop_10M_s": round(machine_speed(), 2),
    }
    h.report["host_lost"] = figures
    print("\nhost lost:", json.dumps(figures))
    assert set(statuses) <= {202, 429}, figures
    assert not wrong and all(v["status"] == "succeeded" for v in views.values()), figures
    assert led["accepted"] == led.get("succeeded", 0) == len(load.accepted) and not led.get("failed"), figures
    assert led.get("redelivered", 0) >= 1, figures  # host B's held messages came back
    assert capacity_s is not None, figures  # the scaler replaced the lost processes on host A
