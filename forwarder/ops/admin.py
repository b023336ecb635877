"""The admin app: the operator routes, served on `[server] admin_listen`, never on ingest."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from forwarder.config import ServerConfig
from forwarder.ingest.app import STATE_KEY, IngestState, healthz, readyz
from forwarder.ops.dead_letter_routes import add_dead_letter_routes
from forwarder.ops.metrics import metrics_handler
from forwarder.ops.snapshot import Snapshot
from forwarder.ops.status import status_handler
from forwarder.pipeline import Pipeline


def build_admin_app(pipeline: Pipeline, ingest: IngestState) -> web.Application:
    """/metrics, /status, /healthz and /readyz; an operator route is one add_* line here.

    `ingest` is the ingest app's state, shared so both ports' /readyz say the same.
    """
    app = build_status_app(pipeline.snapshot, ingest)
    add_dead_letter_routes(app, pipeline)
    return app


def build_status_app(snapshot: Callable[[], Snapshot], ingest: IngestState) -> web.Application:
    """The routes every mode has (a cluster node's admin app is only these)."""
    app = web.Application()
    app[STATE_KEY] = ingest
    app.router.add_get("/metrics", metrics_handler(snapshot, ingest))
    app.router.add_get("/status", status_handler(snapshot))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_admin(app: web.Application, server: ServerConfig) -> web.AppRunner:
    """Start `app` on admin_listen; the runner, for cleanup() after the drain.

    A plain runner: the ingest port's connection cap and header clock guard against the
    public, and counting scrapes against it would let a busy public starve the operator.
    """
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=server.shutdown_timeout_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, server.admin_host, server.admin_port, reuse_address=True)
    await site.start()
    return runner
