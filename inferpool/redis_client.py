"""Redis clients built one way for every process.

redis-py 8 applies a 5 s socket timeout by default, which kills an idle
blocking read; readers that block pass ``blocking=True`` to get none.
"""

from __future__ import annotations

import redis
import redis.asyncio as aredis

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0


def sync_client(url: str, blocking: bool = False) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=None if blocking else SOCKET_TIMEOUT_S,
        health_check_interval=10,
    )


def async_client(url: str, blocking: bool = False) -> aredis.Redis:
    return aredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=None if blocking else SOCKET_TIMEOUT_S,
        health_check_interval=10,
    )
