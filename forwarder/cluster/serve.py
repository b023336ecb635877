"""A cluster node's lifecycle in the daemon: serve, run, drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import logging

from forwarder.cluster.node import ClusterNode
from forwarder.config import Config
from forwarder.ingest.app import build_app
from forwarder.ops import systemd
from forwarder.ops.admin import build_status_app
from forwarder.ops.listeners import Listeners
from forwarder.reload import ConfigSource

log = logging.getLogger("forwarder.daemon")


async def serve_cluster(
    config: Config,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    config_path: str | None = None,
) -> int:
    """Run a cluster node until `stop` is set, then drain; the process exit status.

    Raises ClusterUnavailable when NATS does not answer at start, StreamMismatch when the
    stream disagrees with the config, ListenError when a port is taken.
    """
    node = await ClusterNode.open(config)
    if config_path is not None:
        node.config_source = ConfigSource.at_start(config_path)
    server = config.server
    try:
        listeners = await Listeners.open(
            server,
            build_app(server, node.ingest),
            lambda state: build_status_app(node.snapshot, state),
        )
    except BaseException:
        await node.stop()
        raise
    await node.start()
    listeners.ready()
    systemd.StartupProgress().ready(f"cluster node {node.cluster.node} on {server.listen}")
    log.info(
        "listening on %s (admin %s) as cluster node %s with %d sync(s)",
        server.listen,
        server.admin_listen,
        node.cluster.node,
        len(node.deliveries),
        extra={"node": node.cluster.node, "syncs": [d.name for d in node.deliveries]},
    )
    reloader = asyncio.create_task(node.reload_on(reload), name="reload") if reload else None
    await stop.wait()
    if reloader is not None:
        reloader.cancel()
    listeners.stop_taking()
    log.info("draining: new requests get 429, fetched messages are delivered")
    drained = await node.drain(server.drain_timeout_seconds)
    left = await node.stop()
    await listeners.close()
    if drained:
        log.info("drained: every message fetched was delivered and acknowledged")
    else:
        log.warning(
            "drain timeout: %d queued item(s) left; their messages stay in the stream for "
            "the partitions' next owners",
            left,
        )
    return 0
