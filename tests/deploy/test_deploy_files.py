"""docker-compose.yml, the Dockerfile and the Procfile run the same processes as `inferpool up`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli.processes import PROCESSES
from inferpool.settings import Settings
from workers.worker import worker_argv

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, cmd = line.partition(":")
            out[name.strip()] = shlex.split(cmd)
    return out


def test_procfile_runs_the_same_commands_as_up():
    pf = procfile()
    for spec in PROCESSES:
        assert pf[spec.name] == list(spec.argv), spec.name
    assert "--appendonly" in pf["redis"] and pf["redis"][pf["redis"].index("--appendonly") + 1] == "yes"
    assert "--daemonize" not in pf["redis"]  # honcho needs it in the foreground


def test_compose_runs_the_same_commands_as_up():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    for spec in PROCESSES:
        assert services[spec.name]["command"] == list(spec.argv), spec.name
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["healthcheck"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Secrets are required from the environment, never written here.
    flower_env = services["flower"]["environment"]
    assert flower_env["INFERPOOL_FLOWER_PASSWORD"].startswith("${INFERPOOL_FLOWER_PASSWORD:?")


def compose_services() -> dict[str, dict]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: svc for name, svc in services.items() if not name.startswith("x-")}


def seconds(duration: str) -> float:
    value, unit = float(duration[:-1]), duration[-1]
    return value * {"s": 1, "m": 60}[unit]


def test_compose_long_running_services_have_healthchecks():
    services = compose_services()
    one_shot = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shot == {"model"}
    for name, svc in services.items():
        if name not in one_shot:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # Workers are checked by their heartbeat under the node name `inferpool worker` gives them (role@%h).
    for name, role in (("worker", "work"), ("worker_online", "online")):
        argv = worker_argv(role, ["q"], 1, None)
        assert argv[argv.index("-n") + 1] == f"{role}@%h"
        assert services[name]["healthcheck"]["test"] == [
            "CMD-SHELL",
            f"inferpool health worker --node {role}@$$HOSTNAME",
        ]
    assert services["scaler"]["healthcheck"]["test"] == ["CMD", "inferpool", "health", "scaler"]
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_compose_workers_outlast_the_task_time_limit_on_stop():
    limit_s = Settings.model_fields["task_time_limit_s"].default
    for name in ("worker", "worker_online"):
        assert seconds(compose_services()[name]["stop_grace_period"]) > limit_s, name


def test_compose_models_read_only_except_the_trainer():
    for name, svc in compose_services().items():
        for mount in svc.get("volumes", []):
            if mount.split(":")[1] == "/models":
                assert mount.endswith(":ro") == (name != "model"), (name, mount)


def test_compose_scaler_uses_an_actuator_the_image_can_run():
    """The image has no docker CLI and no socket: the scaler resizes pools over Redis (celery actuator)."""
    scaler_env = compose_services()["scaler"]["environment"]
    assert scaler_env["INFERPOOL_SCALER_ACTUATOR"] == "celery"
    assert "INFERPOOL_SCALER_COMPOSE_SERVICE" not in (ROOT / "docker-compose.yml").read_text()


def test_dockerfile_installs_every_package_it_runs():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("inferpool", "api", "workers", "scaler", "cli", "loadtest"):
        assert f"COPY {pkg} ./{pkg}" in text
    assert "USER inferpool" in text  # not root
    # The locked server set, hashes checked, then inferpool without resolving again.
    assert "pip install --require-hashes -r requirements-server.lock" in text
    assert "pip install --no-deps ." in text


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="no docker-compose client (make tools installs it)")
def test_compose_config_validates():
    """The compose client resolves the file without an engine, and names unset secrets."""
    env = {
        "REDIS_PASSWORD": "x", "INFERPOOL_FLOWER_USER": "u", "INFERPOOL_FLOWER_PASSWORD": "p",
        "INFERPOOL_API_KEYS": "client:secret", "PATH": "/usr/local/bin:/usr/bin:/bin",
    }  # fmt: skip
    cmd = ["docker-compose", "config", "-q"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    missing = subprocess.run(cmd, cwd=ROOT, env={"PATH": env["PATH"]}, capture_output=True)
    assert missing.returncode != 0 and b"REDIS_PASSWORD" in missing.stderr
    # API keys are on: no keys, no start, unless the data routes are opened on purpose.
    no_keys = {k: v for k, v in env.items() if k != "INFERPOOL_API_KEYS"}
    refused = subprocess.run(cmd, cwd=ROOT, env=no_keys, capture_output=True)
    assert refused.returncode != 0 and b"INFERPOOL_AUTH=off" in refused.stderr
    opened = subprocess.run(cmd, cwd=ROOT, env={**no_keys, "INFERPOOL_AUTH": "off", "INFERPOOL_API_KEYS": ""})
    assert opened.returncode == 0
    resolved = yaml.safe_load(subprocess.run(cmd[:2], cwd=ROOT, env=env, capture_output=True).stdout)
    assert resolved["services"]["api"]["environment"]["INFERPOOL_AUTH"] == "on"  # the API refuses empty keys
