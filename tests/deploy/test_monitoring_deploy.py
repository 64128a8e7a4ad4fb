"""The shipped Prometheus config, alert rules and Grafana dashboard check themselves against promtool and
against the metric names a real stack exposes; ``inferpool status`` draws the real system."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from cli.status_view import quantile_from_buckets
from inferpool.exporter import ClusterCollector, serve
from inferpool.settings import Settings
from tests.support.monitoring import ROOT, names_in, scrape_text, worker_metrics_url

PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "inferpool-dashboard.json"
# Exported by the scaler next to the cluster exporter (scaler/metrics.py), named here by agreement.
SCALER_OWNED = {
    "inferpool_scaler_desired_processes", "inferpool_scaler_actual_processes", "inferpool_scaler_max_processes",
}  # fmt: skip
needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool missing: `make tools` installs Debian's prometheus package"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def alert_exprs() -> dict[str, str]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\binferpool_[a-z0-9_]+", expr))


@needs_promtool
def test_promtool_accepts_configs_rules_and_alert_unit_tests():
    for cfg in ("prometheus.yml", "prometheus.compose.yml"):
        r = promtool("check", "config", f"deploy/prometheus/{cfg}")
        assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    assert tested == set(alert_exprs()), "every alert has a promtool unit test"


def test_every_alert_explains_itself_and_links_its_runbook_entry():
    """summary, description and a runbook_url whose anchor is an entry of the README's Runbook section."""
    readme = (ROOT / "README.md").read_text()
    runbook = readme.split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
    entries = {h.lower() for h in re.findall(r"^### (\w+)$", runbook, re.M)}
    rules = alert_rules()
    for rule in rules:
        notes = rule["annotations"]
        assert notes.get("summary") and notes.get("description"), rule["alert"]
        assert len(notes["description"]) > len(notes["summary"]) // 2, rule["alert"]
        assert notes.get("runbook_url") == f"README.md#{rule['alert'].lower()}", rule["alert"]
    assert entries == {r["alert"].lower() for r in rules}, "one Runbook entry per alert, none for a missing alert"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool has no expression checker, but it parses recording rules: one per dashboard query."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def _scaler_names() -> set[str]:
    try:
        from scaler.metrics import ScalerMetrics
    except ImportError:
        return set()
    m = ScalerMetrics("inferpool.work")
    m.set_pool(desired=2, actual=2, min=1, max=8, need=2)
    return {f.name for f in m.collect()}


def test_every_metric_in_dashboard_and_alerts_is_exposed(stack, api):
    api.post("/v1/predict", json={"instances": [[0.2] * 20]})
    api.post("/v1/jobs", json={"instances": [[0.3] * 20] * 10, "work_ms": 1})
    nodes = [p.node for p in stack.procs if hasattr(p, "node")]
    s = Settings(model_dir=stack.env["INFERPOOL_MODEL_DIR"])
    server = serve(0, [ClusterCollector(stack.client, s)])
    try:
        texts = [scrape_text(f"{stack.url}/metrics"), scrape_text(f"{server.url}/metrics")]
        texts += [scrape_text(worker_metrics_url(stack.client, n)) for n in nodes]
    finally:
        server.close()
    exposed = set().union(*(names_in(t) for t in texts))
    # Prometheus's naming rules: promtool lints _total on counters, base units and snake_case; and no
    # name of ours ends in a unit-less or rate word (a depth is messages, a share a ratio, a rate PromQL's).
    if shutil.which("promtool"):
        for text in texts:
            lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert lint.returncode == 0, lint.stdout + lint.stderr
    badly_named = {n for n in exposed if re.search(r"_(rate|depth|share|percent|ms|milliseconds)$", n)}
    assert not badly_named, badly_named
    scaler = _scaler_names()
    if scaler:
        assert scaler >= SCALER_OWNED, "the scaler exports the names the alerts and dashboard use"
    used = set().union(*(metric_names(e) for e in [*dashboard_exprs(), *alert_exprs().values()]))
    missing = used - exposed - SCALER_OWNED
    assert not missing, f"used in deploy/ but not exposed: {sorted(missing)}"
    # And the dashboard shows the core families at all.
    core = ("inferpool_queue_messages", "inferpool_task_queue_wait_seconds_bucket", "inferpool_worker_busy_processes")
    assert set(core) <= used


def test_quantile_from_buckets():
    assert quantile_from_buckets(0.95, {}) is None
    assert quantile_from_buckets(0.5, {0.1: 0.0, 1.0: 0.0, float("inf"): 0.0}) is None
    # 10 observations: 1 under 0.1 s, 9 between 0.1 and 1 s: the median interpolates inside (0.1, 1].
    assert quantile_from_buckets(0.5, {0.1: 1.0, 1.0: 10.0, float("inf"): 10.0}) == pytest.approx(0.1 + 0.9 * 4 / 9)
    assert quantile_from_buckets(0.99, {0.1: 1.0, 1.0: 2.0, float("inf"): 10.0}) == 1.0  # in +Inf: last bound


def test_status_view_draws_the_real_system(stack, api):
    api.post("/v1/predict", json={"instances": [[0.1] * 20]})
    cmd = [sys.executable, "-m", "cli.main", "status", "--frames", "2", "--interval", "0.5"]
    r = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for want in ("inferpool.online", "inferpool.work", "inferpool.bulk", "p95 wait", "throughput", "drift: "):
        assert want in out, want
    for p in stack.procs:
        if hasattr(p, "node"):
            assert p.node in out
    assert "workers 2 live, pool 4 processes" in out
    r = subprocess.run([*cmd[:-4], "--url", stack.url, "--frames", "1"], env=stack.env, capture_output=True, text=True)
    assert r.returncode == 0 and "workers 2 live" in r.stdout, r.stderr
