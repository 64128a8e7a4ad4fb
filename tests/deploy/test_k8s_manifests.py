"""deploy/k8s validated without kubectl or a cluster.

Every built-in object is checked against the Kubernetes JSON schema bundled in ``kubernetes-validate``
(strict: unknown fields fail too; the schemas ship in the wheel, so nothing is fetched). The CRDs
(KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor) have no schema there and get a
structural check instead, as do the conventions a schema cannot see: probes, securityContext, pinned
image, listen addresses, grace periods, PDB and Service selectors, and the kustomization's file list.
"""

from __future__ import annotations

import copy
import re
import socket
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cli.processes import by_name
from inferpool.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest minor still supported upstream when this was written
CRDS = {"keda.sh/v1alpha1": {"ScaledObject"}, "monitoring.coreos.com/v1": {"ServiceMonitor"}}
# In the directory but not in kustomization.yaml: one autoscaler is chosen, and the Secret is the user's.
ALTERNATIVES = {"keda-scaledobject.yaml", "hpa-external.yaml"}
NOT_APPLIED = {"secret.example.yaml", "kustomization.yaml"}
AUTOSCALERS = ALTERNATIVES | {"keda-metrics-api.yaml"}


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def applied() -> list[tuple[str, dict]]:
    resources = set(kustomization()["resources"])
    return [(name, d) for name, d in manifests() if name in resources]


def of_kind(kind: str, docs: list[tuple[str, dict]] | None = None) -> list[dict]:
    return [d for _, d in docs or manifests() if d["kind"] == kind]


def deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in of_kind("Deployment")}


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


DOCS = manifests()


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}:{d['metadata']['name']}" for n, d in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict) -> None:
    if doc["kind"] in CRDS.get(doc["apiVersion"], set()):
        assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_works_offline_and_catches_mistakes(monkeypatch) -> None:
    def no_network(*_a, **_kw):
        raise AssertionError("the schema check tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    dep = copy.deepcopy(deployments()["inferpool-api"])
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_every_process_has_a_deployment_running_its_command() -> None:
    commands = {tuple(d["spec"]["template"]["spec"]["containers"][0]["command"][:4]) for d in of_kind("Deployment")}
    for spec in by_name().values():
        assert spec.argv in {c[: len(spec.argv)] for c in commands}, spec.name


def test_containers_have_probes_ports_resources_and_a_locked_down_security_context() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    [image] = kustomization()["images"]
    assert image["newTag"] == version
    for name, dep in deployments().items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and isinstance(pod["securityContext"]["runAsUser"], int)
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod.get("automountServiceAccountToken") is False, name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            repo, _, tag = c["image"].partition(":")
            assert repo == image["name"] and tag == version, (name, c["image"])  # pinned, never :latest
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            # Read-only root: PROMETHEUS_MULTIPROC_DIR (/tmp/inferpool-metrics in the image) needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c["volumeMounts"]), name
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], name
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports, name
            for kind in ("livenessProbe", "readinessProbe"):
                probe = c[kind]
                if "httpGet" in probe:
                    assert probe["httpGet"]["port"] in ports, (name, kind)
                else:
                    assert probe["exec"]["command"], (name, kind)
            for mount in c["volumeMounts"]:
                if mount["mountPath"] == "/models":
                    assert mount["readOnly"] is True, name  # only the trainer writes models


def test_probes_use_each_process_health_check() -> None:
    deps = deployments()

    def probes(name: str) -> dict[str, dict]:
        c = deps[name]["spec"]["template"]["spec"]["containers"][0]
        return {k: c[k] for k in ("livenessProbe", "readinessProbe")}

    api = probes("inferpool-api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    flower = probes("inferpool-flower")
    assert {p["httpGet"]["path"] for p in flower.values()} == {"/healthcheck"}
    for p in probes("inferpool-scaler").values():
        assert p["exec"]["command"] == ["inferpool", "health", "scaler"]  # not /metrics: a full Redis read
    for dep, role in (("inferpool-worker", "work"), ("inferpool-worker-online", "online")):
        for p in probes(dep).values():
            # Celery names the node role@%h (workers/worker.py); %h is the pod's hostname.
            assert p["exec"]["command"] == ["sh", "-c", f"inferpool health worker --node {role}@$(hostname)"]


def test_listen_addresses_prometheus_can_reach() -> None:
    deps = deployments()
    for name in ("inferpool-api", "inferpool-worker", "inferpool-worker-online", "inferpool-flower"):
        # INFERPOOL_API_HOST is the API's, Flower's and the worker metrics' bind address.
        assert env(deps[name]["spec"]["template"]["spec"]["containers"][0])["INFERPOOL_API_HOST"]["value"] == "0.0.0.0"
    scaler = env(deps["inferpool-scaler"]["spec"]["template"]["spec"]["containers"][0])
    assert scaler["INFERPOOL_SCALER_METRICS_HOST"]["value"] == "0.0.0.0"
    for name in ("inferpool-worker", "inferpool-worker-online"):
        c = deps[name]["spec"]["template"]["spec"]["containers"][0]
        port = int(env(c)["INFERPOOL_WORKER_METRICS_PORT"]["value"])
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == port


def test_secrets_come_from_the_secret_never_literals() -> None:
    secret = of_kind("Secret")[0]
    for name, dep in deployments().items():
        e = env(dep["spec"]["template"]["spec"]["containers"][0])
        for var in ("REDIS_URL", "INFERPOOL_API_KEYS", "INFERPOOL_ADMIN_KEYS", "INFERPOOL_FLOWER_PASSWORD"):
            if var in e:
                ref = e[var]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], (name, var)
        assert "REDIS_URL" in e, name  # Redis is external: its URL (and password) only from the Secret
    flower = env(deployments()["inferpool-flower"]["spec"]["template"]["spec"]["containers"][0])
    assert "secretKeyRef" in flower["INFERPOOL_FLOWER_USER"]["valueFrom"]


def test_grace_periods_outlast_the_task_time_limit() -> None:
    limit = Settings.model_fields["task_time_limit_s"].default
    for name in ("inferpool-api", "inferpool-worker", "inferpool-worker-online"):
        pod = deployments()[name]["spec"]["template"]["spec"]
        c_limit = int(env(pod["containers"][0]).get("INFERPOOL_TASK_TIME_LIMIT_S", {"value": limit})["value"])
        assert pod["terminationGracePeriodSeconds"] > max(limit, c_limit), name


def test_pdbs_and_services_select_real_pods() -> None:
    pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments().items()}
    for dep in deployments().values():
        assert matches(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    guarded = set()
    for pdb in of_kind("PodDisruptionBudget"):
        hit = {n for n, labels in pods.items() if matches(pdb["spec"]["selector"]["matchLabels"], labels)}
        assert len(hit) == 1, pdb["metadata"]["name"]
        guarded |= hit
    assert {"inferpool-api", "inferpool-worker", "inferpool-worker-online"} <= guarded
    for svc in of_kind("Service"):
        hit = [n for n, labels in pods.items() if matches(svc["spec"]["selector"], labels)]
        assert hit, svc["metadata"]["name"]
        for n in hit:
            names = {p["name"] for c in deployments()[n]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in names, (svc["metadata"]["name"], n)
    workers = [n for n in pods if any(matches(s["spec"]["selector"], pods[n]) for s in of_kind("Service"))]
    assert {"inferpool-worker", "inferpool-worker-online"} <= set(workers)


def test_service_monitors_scrape_the_api_the_workers_and_the_exporter() -> None:
    services = of_kind("Service")
    scraped = set()
    for sm in of_kind("ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        [svc] = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in port_names and ep["path"] == "/metrics"
        scraped.add(svc["metadata"]["name"])
    assert scraped == {"inferpool-api", "inferpool-workers", "inferpool-scaler"}


def test_kustomization_lists_every_manifest_and_one_autoscaler() -> None:
    k = kustomization()
    assert k["kind"] == "Kustomization" and re.fullmatch(r"[a-z0-9-]+", k["namespace"])
    files = {p.name for p in K8S.glob("*.yaml")}
    assert set(k["resources"]) == files - ALTERNATIVES - NOT_APPLIED
    assert len(AUTOSCALERS & set(k["resources"])) == 1
    # The metrics-api trigger's URL names the namespace the kustomization puts the scaler Service in.
    [so] = of_kind("ScaledObject", [d for d in manifests() if d[0] == "keda-metrics-api.yaml"])
    assert f".{k['namespace']}.svc:" in so["spec"]["triggers"][0]["metadata"]["url"]
    for name, doc in applied():
        assert "namespace" not in doc["metadata"], name  # set once, by the kustomization
