"""A cluster node in this process on real sockets: its ingest and admin apps, start, crash."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from forwarder.cluster.node import ClusterNode
from forwarder.cluster.tasks import stop_task
from forwarder.config import Config, parse_config
from forwarder.ingest.app import STATE_KEY, build_app
from forwarder.ops.admin import build_status_app
from tests.harness import AMPLITUDE_KEY, ITERABLE_KEY, serve

SYNC: dict[str, Any] = {
    "name": "test",
    "api_key": ITERABLE_KEY,
    "mappings": {"email": "user_properties.email", "user_id": "user_id"},
    "events": {"select": ["*"], "event_properties": ["n", "price"], "user_properties": []},
    "users": {"user_properties": ["plan", "logins"]},
    "delivery": {
        "linger_ms": 20,
        "backoff_initial_seconds": 0.02,
        "backoff_max_seconds": 0.2,
        "outage_pause_after_failures": 2,
        "outage_pause_after_seconds": 0.1,
        "outage_probe_seconds": 0.2,
        "outage_probe_max_seconds": 0.5,
        "max_retry_seconds": 600,
        "max_attempts": 1000,
    },
}


def cluster_config(
    tmp_path: Path,
    iterable_url: str,
    nats_url: str,
    redis_url: str,
    node: str,
    partitions: int = 4,
    lease_seconds: float = 3.0,
) -> Config:
    raw = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "api_keys": [AMPLITUDE_KEY],
            "drain_timeout_seconds": 10,
        },
        "storage": {"path": str(tmp_path / node)},
        "syncs": [{**SYNC, "base_url": iterable_url}],
        "cluster": {
            "nats_url": nats_url,
            "redis_url": redis_url,
            "node": node,
            "partitions": partitions,
            "lease_seconds": lease_seconds,
            "publish_timeout_seconds": 2,
        },
    }
    return parse_config(raw, env={})


class NodeInProcess:
    """A ClusterNode with its ingest app and admin app served on free ports."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = ""
        self.admin_url = ""
        self._node: ClusterNode | None = None
        self._runners: list[web.AppRunner] = []

    @property
    def node(self) -> ClusterNode:
        assert self._node is not None, "start() first"
        return self._node

    async def start(self) -> NodeInProcess:
        self._node = node = await ClusterNode.open(self.config)
        app = build_app(self.config.server, node.ingest)
        runner, self.url = await serve(app)
        admin, self.admin_url = await serve(build_status_app(node.snapshot, app[STATE_KEY]))
        self._runners = [runner, admin]
        await node.start()
        app[STATE_KEY].ready = True
        return self

    async def drain_and_stop(self, timeout: float = 20.0) -> bool:
        drained = await self.node.drain(timeout)
        await self.node.stop()
        await self._close_listeners()
        return drained

    async def crash(self) -> None:
        """Stop as kill -9 would, as far as the others can tell: no lease released, no
        profile flushed, nothing acknowledged from now on, the connections dropped."""
        node = self.node
        tasks = [*node.ownership._tasks]  # the lease rounds: no renewal, no release
        await asyncio.gather(*(stop_task(task) for task in tasks))
        await node.tracker.stop()
        for consumer in list(node.partitions.consumers.values()):
            await consumer.stop()
        await node.status.stop()
        await node.fleet.stop()
        await node.nc.close()
        await node.redis.aclose()
        await self._close_listeners()

    async def _close_listeners(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
