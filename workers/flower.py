"""Flower, always behind basic auth: it refuses to start without credentials."""

from __future__ import annotations

import os
import sys

from inferpool.settings import get_settings


class FlowerCredentialsMissing(SystemExit):
    pass


def flower_env() -> dict[str, str]:
    s = get_settings()
    if not s.flower_user or s.flower_password is None or not s.flower_password.get_secret_value():
        raise FlowerCredentialsMissing(
            "Flower needs credentials: set INFERPOOL_FLOWER_USER and INFERPOOL_FLOWER_PASSWORD"
        )
    # Passed through the environment, not argv, so they do not show in `ps`.
    return {**os.environ, "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password.get_secret_value()}"}


def run_flower(port: int | None, address: str | None) -> int:
    s = get_settings()
    env = flower_env()
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.app:app", "flower",
        f"--port={port or s.flower_port}", f"--address={address or s.api_host}",
    ]  # fmt: skip
    os.execve(argv[0], argv, env)
    return 0  # not reached
