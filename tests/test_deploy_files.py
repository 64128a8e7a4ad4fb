"""docker-compose.yml, the Dockerfile and the Procfile run the same processes as `inferpool up`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from inferpool.processes import PROCESSES

ROOT = Path(__file__).resolve().parent.parent


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


def test_dockerfile_installs_every_package_it_runs():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("inferpool", "api", "workers", "scaler"):
        assert f"COPY {pkg} ./{pkg}" in text
    assert "USER inferpool" in text  # not root


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="no docker-compose client (make tools installs it)")
def test_compose_config_validates():
    """The compose client resolves the file without an engine, and names unset secrets."""
    env = {"REDIS_PASSWORD": "x", "INFERPOOL_FLOWER_USER": "u", "INFERPOOL_FLOWER_PASSWORD": "p"}
    cmd = ["docker-compose", "config", "-q"]
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "PATH": "/usr/local/bin:/usr/bin:/bin"}, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    missing = subprocess.run(cmd, cwd=ROOT, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, capture_output=True)
    assert missing.returncode != 0 and b"REDIS_PASSWORD" in missing.stderr
