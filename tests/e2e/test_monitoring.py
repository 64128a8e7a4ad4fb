"""Metrics on a real stack: exact counts after known traffic, one exposition per process group,
the cluster exporter's queue, worker and ledger series, and promtool on the real exposition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferpool import keys
from inferpool.exporter import ClusterCollector, serve
from inferpool.settings import Settings
from tests.support.jobs import wait_job
from tests.support.monitoring import has, parse, scrape, scrape_text, value, worker_metrics_url
from tests.support.waiting import wait_until

N_FEATURES = 20
ONLINE, WORK, BULK = keys.QUEUE_ONLINE, keys.QUEUE_WORK, keys.QUEUE_BULK


def _nodes(stack) -> dict[str, str]:
    return {p.node.split("-")[0]: p.node for p in stack.procs if hasattr(p, "node")}


def _urls(stack) -> dict[str, str]:
    n = _nodes(stack)
    return {
        "api": f"{stack.url}/metrics",
        "online": worker_metrics_url(stack.client, n["online"]),
        "work": worker_metrics_url(stack.client, n["work"]),
    }


def test_counts_after_known_traffic(stack, api):
    """Requests, tasks, rows and predictions add up exactly; API and worker expositions do not overlap."""
    urls = _urls(stack)
    before = {k: scrape(u) for k, u in urls.items()}
    rng = np.random.default_rng(11)

    jobs = [api.post("/v1/jobs", json={"instances": rng.normal(size=(5000, N_FEATURES)).tolist()}) for _ in range(2)]
    heavy = api.post("/v1/jobs", json={"instances": rng.normal(size=(100, N_FEATURES)).tolist(), "work_ms": 20})
    assert all(r.status_code == 202 for r in [*jobs, heavy])
    for r in [*jobs, heavy]:
        assert wait_job(api, r.json()["job_id"])["status"] == "succeeded"
    for _ in range(20):
        assert api.post("/v1/predict", json={"instances": rng.normal(size=(1, N_FEATURES)).tolist()}).status_code == 200

    def delta(group: str, name: str, now: dict, **labels: str) -> float:
        return value(now[group], name, **labels) - value(before[group], name, **labels)

    now: dict = {}

    def settled() -> bool:
        now.update({k: scrape(u) for k, u in urls.items()})
        rows = delta("online", "inferpool_task_batch_rows_sum", now) + delta(
            "work", "inferpool_task_batch_rows_sum", now
        )
        return rows >= 10_120  # worker counters move just after the reply is sent

    wait_until(settled, 10, "worker counters")
    # API: every request counted by route template, duration histogram alike; tasks published per queue.
    assert delta("api", "inferpool_http_requests_total", now, route="/v1/jobs", method="POST", status="202") == 3
    assert delta("api", "inferpool_http_requests_total", now, route="/v1/predict", method="POST", status="200") == 20
    assert delta("api", "inferpool_http_request_duration_seconds_count", now, route="/v1/predict", method="POST") == 20
    assert delta("api", "inferpool_tasks_enqueued_total", now, queue=BULK) == 4  # two jobs of two 4,096-row chunks
    assert delta("api", "inferpool_tasks_enqueued_total", now, queue=WORK) == 1
    online_tasks = delta("api", "inferpool_tasks_enqueued_total", now, queue=ONLINE)
    assert 1 <= online_tasks <= 20  # micro-batched
    # Workers: outcomes, waits, run times and rows per queue; predictions by class and model version.
    ok = "inferpool_tasks_completed_total"
    assert delta("online", ok, now, queue=BULK, outcome="success") == 4
    assert delta("online", ok, now, queue=ONLINE, outcome="success") == online_tasks
    assert delta("work", ok, now, queue=WORK, outcome="success") == 1
    assert delta("online", "inferpool_task_batch_rows_sum", now, queue=BULK) == 10_000
    assert delta("online", "inferpool_task_batch_rows_sum", now, queue=ONLINE) == 20
    assert delta("work", "inferpool_task_batch_rows_sum", now, queue=WORK) == 100
    assert delta("online", "inferpool_task_queue_wait_seconds_count", now, queue=BULK) == 4
    assert delta("work", "inferpool_task_run_seconds_count", now, queue=WORK) == 1
    assert delta("work", "inferpool_task_run_seconds_sum", now, queue=WORK) >= 0.02  # work_ms=20
    version = api.get("/v1/models").json()["version"]
    preds = delta("online", "inferpool_predictions_total", now, model_version=version) + delta(
        "work", "inferpool_predictions_total", now, model_version=version
    )
    assert preds == 10_120
    assert delta("online", "inferpool_tasks_completed_total", now, outcome="failure") == 0
    # One exposition per process group: no worker samples at the API and no API samples at a worker.
    assert not has(now["api"], "inferpool_tasks_completed_total")
    assert not has(now["online"], "inferpool_http_requests_total")
    assert not has(now["work"], "inferpool_task_batch_rows_count", queue=BULK)


def test_model_info_from_api_and_workers(stack, api):
    m = api.get("/v1/models").json()
    for group, url in _urls(stack).items():
        samples = scrape(url)
        assert value(samples, "inferpool_model_info", version=m["version"], sha256=m["sha256"]) == 1, group


def _cluster_server(stack, **kw):
    s = Settings(model_dir=stack.env["INFERPOOL_MODEL_DIR"], visibility_timeout_s=60)
    return serve(0, [ClusterCollector(stack.client, s, **kw)], targets=ClusterCollector(stack.client, s).targets)


def test_cluster_exporter_on_the_shared_stack(stack, api):
    """Workers with their pool sizes, the ledger balanced once idle, and /targets listing both workers."""
    server = _cluster_server(stack)
    try:
        samples = scrape(f"{server.url}/metrics")
        assert value(samples, "inferpool_exporter_redis_up") == 1
        for node in _nodes(stack).values():
            assert value(samples, "inferpool_worker_up", worker=node) == 1
            assert value(samples, "inferpool_worker_pool_processes", worker=node) == 2
        assert value(samples, "inferpool_live_workers") == 2
        for q in keys.ALL_QUEUES:
            assert has(samples, "inferpool_queue_messages", queue=q)
        accepted = value(samples, "inferpool_ledger_jobs_accepted_total")
        done = value(samples, "inferpool_ledger_jobs_succeeded_total") + value(
            samples, "inferpool_ledger_jobs_failed_total"
        )
        assert accepted > 0 and value(samples, "inferpool_ledger_in_flight_jobs") == accepted - done
        assert value(samples, "inferpool_visibility_timeout_seconds") == 60
        targets = httpx.get(f"{server.url}/targets").json()
        assert {t["labels"]["worker"] for t in targets} == set(_nodes(stack).values())
        assert all(t["targets"][0].startswith("127.0.0.1:") for t in targets)
    finally:
        server.close()


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool missing: `make tools` installs Debian's prometheus")
def test_promtool_check_metrics_on_real_expositions(stack, api):
    api.post("/v1/predict", json={"instances": [[0.1] * N_FEATURES]})
    server = _cluster_server(stack)
    try:
        texts = {k: scrape_text(u) for k, u in _urls(stack).items()}
        texts["exporter"] = scrape_text(f"{server.url}/metrics")
    finally:
        server.close()
    for group, text in texts.items():
        parse(text)  # the Python parser accepts it too
        r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        assert r.returncode == 0, f"{group}: {r.stdout.decode()}{r.stderr.decode()}"


def test_exporter_reports_redis_down_instead_of_failing(tmp_path):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from cli.local_redis import free_port

    # No retries: a production client retries for ~4.6 s first, still inside a 10 s scrape timeout.
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    server = serve(0, [ClusterCollector(client, Settings(model_dir=tmp_path))], include_process_registry=False)
    try:
        r = httpx.get(f"{server.url}/metrics", timeout=10)
        assert r.status_code == 200
        assert value(parse(r.text), "inferpool_exporter_redis_up") == 0
    finally:
        server.close()


def test_scrape_is_cheap(stack):
    """One scrape reads Redis once and evaluates drift over the window: well under a second even here."""
    collector = ClusterCollector(stack.client, Settings(model_dir=stack.env["INFERPOOL_MODEL_DIR"]))
    t0 = time.perf_counter()
    families = list(collector.collect())
    assert time.perf_counter() - t0 < 2.0
    assert {f.name for f in families} >= {
        "inferpool_queue_messages",
        "inferpool_worker_up",
        "inferpool_drift_window_rows",
    }


def test_each_process_group_gets_its_own_metrics_dir(tmp_path):
    """A group's directory is <root>/<group>-<pid>; dead groups' directories go; prometheus_client imported
    before the directory was chosen still writes multiprocess files (the CLI imports subcommand modules first)."""
    stale = tmp_path / "worker-work-999999999"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    code = """
import os, sys
import prometheus_client  # before any directory exists, as the CLI's optional commands do
from inferpool.telemetry import use_metrics_dir
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
d = use_metrics_dir("api")
from inferpool import metrics
metrics.JOBS_ACCEPTED.labels(route="/v1/jobs").inc()
print(d, sorted(p.name for p in d.iterdir()))
"""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    group, files = r.stdout.split(" ", 1)
    assert "inferpool-metrics" in group and group.rsplit("-", 1)[1].isdigit()
    assert "counter_" in files  # multiprocess mode despite the early import
    shutil.rmtree(group, ignore_errors=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code.replace('os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)', "")],
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.split(" ", 1)[0]).parent == tmp_path
    assert not stale.exists()  # its main process is gone
