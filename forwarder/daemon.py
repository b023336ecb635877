"""Wiring from config, and the daemon's lifecycle: serve, recover, run, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from forwarder.config import Config, config_warnings
from forwarder.deliver.rate import RateGates
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import ForwarderError, ListenError, StorageLocked
from forwarder.ingest.app import build_app
from forwarder.ingest.intake import Intake
from forwarder.ops import systemd
from forwarder.ops.admin import build_admin_app
from forwarder.ops.listeners import Listeners
from forwarder.ops.logs import log_start
from forwarder.pipeline import Pipeline
from forwarder.reload import ConfigSource
from forwarder.store.dead_letters import DeadLetterFile, dead_letter_path
from forwarder.store.dedupe import MemorySeenInserts, SeenInserts
from forwarder.store.health import StorageHealth
from forwarder.store.journal import Journal
from forwarder.store.letter_aside import restore_asides
from forwarder.store.lock import StorageLock
from forwarder.store.log import DurableLog, NoLog
from forwarder.store.profiles import MemoryProfileStore, ProfileStore
from forwarder.store.sqlite_dedupe import SqliteSeenInserts
from forwarder.store.sqlite_profiles import SqliteProfileStore

log = logging.getLogger("forwarder.daemon")

# Exit status when another process holds storage.path (as for a config error: don't restart).
EXIT_LOCKED = 2
# A listen address in use (or not ours to bind): 1, so systemd tries again in a moment, as
# the previous process may still be closing its sockets.
EXIT_LISTEN = 1


async def open_pipeline(config: Config) -> Pipeline:
    """The pipeline the config describes, its storage open and nothing started."""
    storage = config.storage
    journaled = storage.durability == "journal"
    # Letters a replay or purge had moved aside when its process stopped go back first.
    restore_asides(Path(storage.path) / "dead-letters")
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
            DeadLetterFile(
                dead_letter_path(storage.path, sync.name),
                fsync=journaled,
                max_bytes=storage.dead_letter_max_bytes,
            ),
            acknowledge=durable_log.acknowledge,
        )
        for sync in enabled
    ]
    intake = Intake(enabled, profiles, storage.max_profile_bytes, seen)
    return Pipeline(config, intake, durable_log, deliveries, health, rate=rate)


def build_daemon_app(config: Config, pipeline: Pipeline) -> web.Application:
    """The ingest app (the public port); the operator routes are ops/admin.py's."""
    return build_app(config.server, pipeline, lambda: pipeline.storage.fault)


async def serve(
    config: Config,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    config_path: str | None = None,
) -> int:
    """Run until `stop` is set, then drain; the process exit status. Each time `reload`
    is set, `config_path` is read again and its syncs put in force."""
    if config.cluster is not None:
        from forwarder.cluster.serve import serve_cluster  # only cluster mode loads its clients

        return await serve_cluster(config, stop, reload, config_path)
    pipeline = await open_pipeline(config)
    if config_path is not None:
        pipeline.config_source = ConfigSource.at_start(config_path)
    listeners = await Listeners.open(
        config.server,
        build_daemon_app(config, pipeline),
        lambda state: build_admin_app(pipeline, state),
    )
    # Serving before recovery, so /healthz answers and /readyz says "not yet".
    progress = systemd.StartupProgress()
    replayed = await pipeline.recover(progress.reading, progress.replaying)
    await pipeline.start()
    listeners.ready()
    progress.ready(f"listening on {config.server.listen}, {replayed} journal record(s) replayed")
    log.info(
        "listening on %s (admin %s) with %d sync(s)",
        config.server.listen,
        config.server.admin_listen,
        len(pipeline.deliveries),
        extra={"syncs": [d.name for d in pipeline.deliveries]},
    )
    reloader = asyncio.create_task(pipeline.reload_on(reload), name="reload") if reload else None
    await stop.wait()
    if reloader is not None:
        reloader.cancel()
    listeners.stop_taking()
    log.info("draining: new requests get 429, queued items are flushed")
    drained = await pipeline.drain(config.server.drain_timeout_seconds)
    left = await pipeline.stop()
    await listeners.close()
    if drained:
        log.info("drained: everything accepted was delivered or dead-lettered")
    elif pipeline.log.durable:
        log.warning("drain timeout: %d item(s) stay in the journal for the next start", left)
    else:
        log.warning("drain timeout: %d item(s) lost (durability = memory)", left)
    return 0


def run(config: Config, config_path: str | None = None) -> int:
    """`forwarder run`: one uvloop process until SIGTERM or SIGINT; SIGHUP re-reads
    `config_path` (the file `config` came from)."""
    import uvloop

    # Before anything under storage.path is opened: a second daemon there would interleave
    # its journal records with ours, and recovery would throw most of both away.
    try:
        lock = StorageLock.acquire(Path(config.storage.path))
    except StorageLocked as error:
        log.critical("%s", error)
        return EXIT_LOCKED
    log_start(config_path, config_warnings(config))

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Set from the start, so a SIGHUP while starting waits for the reload (the default
        # action would end the process); handled once the pipeline runs.
        reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        return await serve(config, stop, reload, config_path)

    try:
        return uvloop.run(main())
    except ListenError as error:  # one line, not a traceback: the operator's fix is plain
        print(f"forwarder: {error}", file=sys.stderr)
        return EXIT_LISTEN
    except ForwarderError as error:  # cluster mode: NATS unreachable, the stream disagrees
        if config.cluster is None:
            raise
        log.critical("%s", error)
        return EXIT_LISTEN
    finally:
        lock.release()
