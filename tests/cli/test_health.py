"""`inferpool health`: what container health checks run against a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from cli import health
from cli import main as cli
from inferpool import keys
from inferpool.settings import get_settings

HEALTH_DB = 10


@pytest.fixture
def client(redis_server, monkeypatch) -> Iterator[redis.Redis]:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{HEALTH_DB}"
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    c = redis.Redis.from_url(url)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()
    get_settings.cache_clear()


def test_worker_health_follows_its_heartbeat(client):
    now = time.time()
    assert "no heartbeat" in health.worker_problem(client, "work@h", now)
    client.hset(keys.worker("work@h"), "updated", now - 1)
    assert health.worker_problem(client, "work@h", now) is None
    assert "stale" in health.worker_problem(client, "work@h", now + keys.WORKER_STALE_S + 1)


def test_health_command_exit_codes(client, capsys):
    assert cli.main(["health", "scaler"]) == 1
    assert "scaler" in capsys.readouterr().err
    client.set(keys.SCALER_HEALTH, b"{}", ex=10)
    assert cli.main(["health", "scaler"]) == 0
    client.hset(keys.worker("online@box"), "updated", time.time())
    assert cli.main(["health", "worker", "--node", "online@box"]) == 0
    assert cli.main(["health", "worker", "--node", "work@box"]) == 1
