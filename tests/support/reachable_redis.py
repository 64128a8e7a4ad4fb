"""A private redis-server that other hosts can reach: bound to one given address, with a password.

``cli.local_redis.LocalRedis`` is for one machine and listens on loopback only. A Redis that workers
on another host use must listen on an address they reach, and needs a password: without one, protected
mode answers every client not on loopback with DENIED. The password goes in the URL (``REDIS_URL`` of
every process) and on redis-server's command line (a test's private server; a real one reads its config).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import redis

from cli.local_redis import START_TIMEOUT_S, LocalRedis, free_port, server_command


@dataclass
class ReachableRedis(LocalRedis):
    host: str = "127.0.0.1"
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.secret, safe='')}@{self.host}:{self.port}/0"

    def start(self) -> ReachableRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        argv = [*server_command(self.port, self.data_dir, self.aof), "--requirepass", self.secret]
        argv[argv.index("--bind") + 1] = self.host
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer at {self.host}:{self.port}")
