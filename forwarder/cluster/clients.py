"""Connections to the servers a cluster shares, with timeouts so a dead server surfaces."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# A dropped connection (a Redis restart, a failover) is tried twice more, 50 then 100 ms
# apart, before the caller sees an error: enough to ride over a reconnect, short enough
# that a stopped Redis surfaces within about 3 x `timeout`.
REDIS_RETRIES = 2


def redis_client(url: str, timeout: float = 2.0) -> Redis:
    """A Redis client for `url` (redis://host:port/db) whose connects and commands give up
    after `timeout` seconds each, so a stopped Redis is an error rather than a hang."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), REDIS_RETRIES),
        health_check_interval=30,
    )
