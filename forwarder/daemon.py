"""Wiring from config, and the daemon's lifecycle: serve, recover, run, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from forwarder.config import Config
from forwarder.deliver.rate import RateGates
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import StorageLocked
from forwarder.ingest.app import STATE_KEY, build_app
from forwarder.ingest.connections import GuardedAppRunner, raise_file_limit
from forwarder.ingest.intake import Intake
from forwarder.ops import systemd
from forwarder.ops.metrics import metrics_handler
from forwarder.ops.status import status_handler
from forwarder.pipeline import Pipeline
from forwarder.store.dead_letters import DeadLetterFile, dead_letter_path
from forwarder.store.dedupe import MemorySeenInserts, SeenInserts
from forwarder.store.health import StorageHealth
from forwarder.store.journal import Journal
from forwarder.store.lock import StorageLock
from forwarder.store.log import DurableLog, NoLog
from forwarder.store.profiles import MemoryProfileStore, ProfileStore
from forwarder.store.sqlite_dedupe import SqliteSeenInserts
from forwarder.store.sqlite_profiles import SqliteProfileStore

log = logging.getLogger("forwarder.daemon")

# Exit status when another process holds storage.path (as for a config error: don't restart).
EXIT_LOCKED = 2


async def open_pipeline(config: Config) -> Pipeline:
    """The pipeline the config describes, its storage open and nothing started."""
    storage = config.storage
    journaled = storage.durability == "journal"
    profiles: ProfileStore
    durable_log: DurableLog
    seen: SeenInserts
    if journaled:
        path = Path(storage.path)
        profiles = await SqliteProfileStore(
            path, storage.profile_cache_size, storage.profile_flush_seconds
        ).open()
        seen = await SqliteSeenInserts(
            path, storage.dedupe_max_entries, storage.dedupe_window_seconds
        ).open()
        durable_log = Journal(
            path / "journal",
            storage.journal_max_bytes,
            storage.journal_segment_bytes,
            damaged_directory=path / "damaged",
        )
        health = StorageHealth(path / "journal")
    else:
        health = StorageHealth(None)
        profiles, durable_log = MemoryProfileStore(storage.profile_cache_size), NoLog()
        seen = MemorySeenInserts(storage.dedupe_max_entries, storage.dedupe_window_seconds)
    enabled = [sync for sync in config.syncs if sync.enabled]
    rate = RateGates(enabled)
    deliveries = [
        SyncDelivery(
            sync,
            rate,
            DeadLetterFile(dead_letter_path(storage.path, sync.name), fsync=journaled),
            acknowledge=durable_log.acknowledge,
        )
        for sync in enabled
    ]
    intake = Intake(enabled, profiles, storage.max_profile_bytes, seen)
    return Pipeline(config, intake, durable_log, deliveries, health)


def build_daemon_app(config: Config, pipeline: Pipeline) -> web.Application:
    """The ingest app plus the operations routes that read the pipeline's snapshot."""
    app = build_app(config.server, pipeline, lambda: pipeline.storage.fault)
    app.router.add_get("/metrics", metrics_handler(pipeline.snapshot, app[STATE_KEY]))
    app.router.add_get("/status", status_handler(pipeline.snapshot))
    return app


async def serve(config: Config, stop: asyncio.Event) -> int:
    """Run until `stop` is set, then drain; the process exit status."""
    pipeline = await open_pipeline(config)
    app = build_daemon_app(config, pipeline)
    raise_file_limit(config.server.max_connections)
    runner = GuardedAppRunner(
        app,
        config.server,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.server.shutdown_timeout_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
    state = app[STATE_KEY]
    watchdog: asyncio.Task[None] | None = None
    interval = systemd.watchdog_interval()
    if interval is not None:
        watchdog = asyncio.create_task(systemd.watchdog_loop(interval), name="watchdog")
    # Serving before recovery, so /healthz answers and /readyz says "not yet".
    await pipeline.recover()
    await pipeline.start()
    state.ready = True
    systemd.notify("READY=1")
    log.info(
        "listening on %s with %d sync(s)",
        config.server.listen,
        len(pipeline.deliveries),
        extra={"syncs": [d.name for d in pipeline.deliveries]},
    )
    await stop.wait()
    # Readiness off and new ingest answered 429 (clients retry elsewhere or later) while
    # the site stays up, so /readyz and /healthz still answer during the drain.
    systemd.notify("STOPPING=1")
    log.info("draining: new requests get 429, queued items are flushed")
    state.ready = False
    state.accepting = False
    drained = await pipeline.drain(config.server.drain_timeout_seconds)
    left = await pipeline.stop()
    await runner.cleanup()
    if watchdog is not None:
        watchdog.cancel()
    if drained:
        log.info("drained: everything accepted was delivered or dead-lettered")
    elif pipeline.log.durable:
        log.warning("drain timeout: %d item(s) stay in the journal for the next start", left)
    else:
        log.warning("drain timeout: %d item(s) lost (durability = memory)", left)
    return 0


def run(config: Config) -> int:
    """`forwarder run`: one uvloop process until SIGTERM or SIGINT."""
    import uvloop

    # Before anything under storage.path is opened: a second daemon there would interleave
    # its journal records with ours, and recovery would throw most of both away.
    try:
        lock = StorageLock.acquire(Path(config.storage.path))
    except StorageLocked as error:
        log.critical("%s", error)
        return EXIT_LOCKED

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(config, stop)

    try:
        return uvloop.run(main())
    finally:
        lock.release()
