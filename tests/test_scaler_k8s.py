"""deploy/k8s checks itself against the code: the metric KEDA reads exists, commands parse, sizes agree."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from inferpool.settings import get_settings
from scaler.cli import add_scaler_command, settings_from_args
from scaler.metrics import ScalerMetrics

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


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
