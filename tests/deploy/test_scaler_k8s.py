"""deploy/k8s checks itself against the code: the metric KEDA reads exists, commands parse, sizes agree."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis
import yaml
from conftest import base_env
from prometheus_client import CollectorRegistry, generate_latest

from cli.local_redis import free_port
from inferpool import keys
from inferpool.exporter import start_cluster_exporter
from inferpool.settings import Settings, get_settings
from scaler.cli import add_scaler_command, settings_from_args
from scaler.metrics import ScalerMetrics

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def docs(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((K8S / name).read_text())}


def container(deployment: dict) -> dict:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c["env"]}


def test_the_trigger_reads_a_metric_the_scaler_exports() -> None:
    metrics = ScalerMetrics("inferpool.work")
    metrics.set_pool(desired=4, actual=2, min=1, max=8, need=4)
    reg = CollectorRegistry()
    reg.register(metrics)
    exported = generate_latest(reg).decode()
    so = docs("keda-scaledobject.yaml")["ScaledObject"]
    [trigger] = so["spec"]["triggers"]
    assert 'inferpool_scaler_desired_processes{queue="inferpool.work"}' in trigger["metadata"]["query"]
    assert 'inferpool_scaler_desired_processes{queue="inferpool.work"} 4.0' in exported
    hpa = docs("hpa-external.yaml")["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "inferpool_scaler_desired_processes"


def test_sizes_agree_between_worker_pods_scaler_and_autoscalers() -> None:
    worker = docs("worker.yaml")["Deployment"]
    per_pod = int(env(container(worker))["INFERPOOL_WORK_CONCURRENCY_MIN"])
    so = docs("keda-scaledobject.yaml")["ScaledObject"]
    hpa = docs("hpa-external.yaml")["HorizontalPodAutoscaler"]
    assert so["spec"]["scaleTargetRef"]["name"] == hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert int(so["spec"]["triggers"][0]["metadata"]["threshold"]) == per_pod
    assert int(hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"]) == per_pod
    scaler_env = env(container(docs("scaler.yaml")["Deployment"]))
    lo, hi = int(scaler_env["INFERPOOL_WORK_CONCURRENCY_MIN"]), int(scaler_env["INFERPOOL_WORK_CONCURRENCY_MAX"])
    assert lo == per_pod * so["spec"]["minReplicaCount"] and hi == per_pod * so["spec"]["maxReplicaCount"]


def test_worker_pods_get_time_for_a_warm_shutdown() -> None:
    worker = docs("worker.yaml")["Deployment"]
    limit = int(env(container(worker))["INFERPOOL_TASK_TIME_LIMIT_S"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > limit
    assert container(worker)["command"] == ["inferpool", "worker", "--role", "work"]


def test_scaler_command_parses_and_decides_only() -> None:
    dep = docs("scaler.yaml")["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    parser = argparse.ArgumentParser(prog="inferpool")
    add_scaler_command(parser.add_subparsers(dest="cmd"))
    cmd = container(dep)["command"]
    assert cmd[0] == "inferpool"
    s = settings_from_args(parser.parse_args(cmd[1:]), get_settings())
    assert s.scaler_actuator == "external"
    port = int(env(container(dep))["INFERPOOL_SCALER_METRICS_PORT"])
    svc = docs("scaler.yaml")["Service"]
    assert svc["spec"]["ports"][0]["port"] == port == int(svc["metadata"]["annotations"]["prometheus.io/port"])


# --- KEDA without Prometheus: the exporter's /keda endpoint and the metrics-api ScaledObject ---------------


def keda_value(doc: dict, location: str) -> float:
    """What KEDA's metrics-api scaler reads at ``valueLocation`` (a GJSON path; here a plain key)."""
    for part in location.split("."):
        doc = doc[part]
    return float(doc)


@contextlib.contextmanager
def beating(client: redis.Redis, name: str) -> Iterator[None]:
    """A worker's heartbeat, sent every half second as a live worker's is, until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            client.zadd(keys.WORKERS, {name: time.time()})
            if stop.wait(0.5):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_keda_endpoint_serves_the_scalers_decision(redis_server, model_dir, tmp_path) -> None:
    """One real scaler tick writes its decision to Redis; the exporter's GET /keda serves it, 503 before."""
    url = redis_server.url.rsplit("/", 1)[0] + "/11"  # a database of its own on the shared server
    client = redis.Redis.from_url(url)
    client.flushdb()
    s = Settings(redis_url=url, model_dir=model_dir)
    server = start_cluster_exporter(s, client=client, port=0, addr="127.0.0.1")
    try:
        r = httpx.get(f"{server.url}/keda", timeout=5)
        assert r.status_code == 503 and "scaler" in r.json()["error"]  # KEDA falls back to its fallback size
        client.hset(keys.worker("work@pod-1"), mapping={"processes": 2, "busy": 0, "queues": keys.QUEUE_WORK})
        env = base_env(url, model_dir, tmp_path, INFERPOOL_SCALER_METRICS_PORT=str(free_port()))
        argv = [sys.executable, "-m", "cli.main", "scaler", "--once", "--dry-run", "--min", "4", "--max", "16"]
        with beating(client, "work@pod-1"):  # the scaler may take longer to start than a beat stays fresh
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        r = httpx.get(f"{server.url}/keda", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc["desired_processes"] == 4 and doc["actual_processes"] == 2  # raised to --min from 2
        assert doc["workers"] == 1 and doc["queue"] == keys.QUEUE_WORK and doc["oldest_wait_s"] == 0
        so = docs("keda-metrics-api.yaml")["ScaledObject"]
        [trigger] = so["spec"]["triggers"]
        assert keda_value(doc, trigger["metadata"]["valueLocation"]) == 4
        assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 200  # beside /metrics, unchanged
    finally:
        server.close()
        client.flushdb()


def test_metrics_api_scaledobject_reads_the_scalers_service() -> None:
    so = docs("keda-metrics-api.yaml")["ScaledObject"]
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
    md = trigger["metadata"]
    assert md["valueLocation"] == "desired_processes" and md["format"] == "json"
    svc = docs("scaler.yaml")["Service"]
    port = svc["spec"]["ports"][0]["port"]
    assert md["url"] == f"http://{svc['metadata']['name']}.inferpool.svc:{port}/keda"
    worker = docs("worker.yaml")["Deployment"]
    assert int(md["targetValue"]) == int(env(container(worker))["INFERPOOL_WORK_CONCURRENCY_MIN"])
    assert so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    prom = docs("keda-scaledobject.yaml")["ScaledObject"]
    for key in ("minReplicaCount", "maxReplicaCount", "fallback", "advanced"):
        assert so["spec"][key] == prom["spec"][key], key
