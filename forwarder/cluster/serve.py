"""A cluster node's lifecycle in the daemon: serve, run, drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiohttp import web

from forwarder.cluster.node import ClusterNode
from forwarder.config import Config
from forwarder.errors import ListenError
from forwarder.ingest.app import STATE_KEY, build_app
from forwarder.ingest.connections import GuardedAppRunner, raise_file_limit
from forwarder.ops import systemd
from forwarder.ops.admin import build_status_app, serve_admin
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
    app = build_app(server, node.ingest)
    raise_file_limit(server.max_connections)
    runner = GuardedAppRunner(
        app,
        server,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=server.shutdown_timeout_seconds,
    )
    await runner.setup()
    state = app[STATE_KEY]
    try:
        with _binding(server.listen):
            await web.TCPSite(runner, server.host, server.port, reuse_address=True).start()
        with _binding(server.admin_listen):
            admin = await serve_admin(build_status_app(node.snapshot, state), server)
    except BaseException:
        await runner.cleanup()
        await node.stop()
        raise
    watchdog: asyncio.Task[None] | None = None
    interval = systemd.watchdog_interval()
    if interval is not None:
        watchdog = asyncio.create_task(systemd.watchdog_loop(interval), name="watchdog")
    await node.start()
    state.ready = True
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
    systemd.stopping(server.drain_timeout_seconds + server.shutdown_timeout_seconds)
    log.info("draining: new requests get 429, fetched messages are delivered")
    state.ready = False
    state.accepting = False
    drained = await node.drain(server.drain_timeout_seconds)
    left = await node.stop()
    await runner.cleanup()
    await admin.cleanup()
    if watchdog is not None:
        watchdog.cancel()
    if drained:
        log.info("drained: every message fetched was delivered and acknowledged")
    else:
        log.warning(
            "drain timeout: %d queued item(s) left; their messages stay in the stream for "
            "the partitions' next owners",
            left,
        )
    return 0


@contextlib.contextmanager
def _binding(address: str) -> Iterator[None]:
    """A failed bind (in use, no permission) as a ListenError naming the address."""
    try:
        yield
    except OSError as error:
        raise ListenError(address, error) from None
