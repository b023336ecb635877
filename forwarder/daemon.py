"""Wiring from config: profiles, routes and deliveries behind the ingest app; lifecycle."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet as Set
from typing import Any

import msgspec

from aiohttp import web

from forwarder.amplitude import Event
from forwarder.config import Config, SyncConfig
from forwarder.deadletters import DeadLetterFile, dead_letter_path
from forwarder.iterable import Endpoint, Item, TrackEvent, UserUpdate
from forwarder.journal import Journal
from forwarder.pipeline import Queued
from forwarder.profiles import ProfileStore, apply_user_properties, open_profile_store
from forwarder.route import CompiledSync, SkipReason, compile_sync, route_event, route_user
from forwarder.sender import LimiterRegistry, SyncDelivery
from forwarder import systemd
from forwarder.metrics import metrics_handler
from forwarder.server import STATE_KEY, build_app
from forwarder.status import status_handler

log = logging.getLogger("forwarder.daemon")
_NO_CHANGE: frozenset[str] = frozenset()


@dataclass
class RouteStats:
    """Per sync: what routing did with the events it saw."""

    events_routed: int = 0
    users_routed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass
class SyncRuntime:
    config: SyncConfig
    compiled: CompiledSync
    delivery: SyncDelivery
    stats: RouteStats = field(default_factory=RouteStats)


class JournalItem(msgspec.Struct, array_like=True):
    sync: str
    endpoint: str
    item: bytes  # the item's JSON, exactly as it is sent


class JournalRecord(msgspec.Struct, array_like=True):
    """What one accepted request turned into: items per sync, and the profiles it left.

    Profiles are stored as their full state after the request, so replaying a record
    twice (or after SQLite already has it) leaves them as if nothing had happened.
    """

    items: list[JournalItem]
    profiles: list[tuple[str, dict[str, Any]]]


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(JournalRecord)
_item_decoders: dict[Endpoint, msgspec.json.Decoder[TrackEvent] | msgspec.json.Decoder[UserUpdate]] = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(TrackEvent),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(UserUpdate),
}
_item_encoder = msgspec.json.Encoder()

Routed = tuple["SyncRuntime", Endpoint, Item, bytes]


class Forwarder:
    """The pipeline entry point the ingest routes hand accepted events to."""

    def __init__(self, config: Config, profiles: ProfileStore, journal: Journal | None) -> None:
        self.config = config
        self.profiles = profiles
        self.journal = journal
        self.limiters = LimiterRegistry()
        enabled = [s for s in config.syncs if s.enabled]
        self.limiters.configure(enabled)
        durable = journal is not None
        self.syncs = [
            SyncRuntime(
                sync,
                compile_sync(sync),
                SyncDelivery(
                    sync,
                    self.limiters,
                    DeadLetterFile(dead_letter_path(config.storage.path, sync.name), fsync=durable),
                    on_settled=self._settled,
                ),
            )
            for sync in enabled
        ]
        self._by_name = {runtime.config.name: runtime for runtime in self.syncs}
        # Journal records replayed at the last start (shown in /status).
        self.replayed_records = 0
        # True until recover() ran: ingest waits (429) so new records follow replayed ones.
        self.recovering = True
        # Requests are processed one at a time so profiles change in arrival order.
        self._lock = asyncio.Lock()
        self._profiles_durable_seq = 0
        self._checkpointer: asyncio.Task[None] | None = None
        if journal is not None:
            journal.profiles_durable_through = lambda: self._profiles_durable_seq

    # --- Intake, for the server ----------------------------------------------------

    def refusal(self, count: int) -> str | None:
        if self.recovering:
            return "Recovering the journal: retry shortly"
        if self.journal is not None and self.journal.full:
            return "Journal disk cap reached: retry later"
        for runtime in self.syncs:
            if not runtime.delivery.has_room():
                return f"Too many queued events for sync {runtime.config.name}: retry later"
        return None

    async def accept(self, events: list[Event]) -> None:
        routed: list[Routed] = []
        touched: dict[str, dict[str, Any]] = {}
        async with self._lock:
            await self.profiles.load({e.amplitude_user for e in events})
            now = int(time.time())
            for event in events:
                self._process(event, now, routed, touched)
            if self.journal is None:
                self._enqueue(None, routed)
                return
            if not routed and not touched:
                return  # nothing to deliver and no profile changed: nothing to make durable
            record = JournalRecord(
                [JournalItem(rt.config.name, ep.value, data) for rt, ep, _, data in routed],
                list(touched.items()),
            )
            # Appended under the lock so journal order is processing order; the items
            # are queued for delivery by the writer, in that order, once durable.
            durable = self.journal.append(
                _record_encoder.encode(record),
                on_durable=functools.partial(self._enqueue, self.journal.last_seq + 1, routed),
            )
        await durable

    def _enqueue(self, seq: int | None, routed: list[Routed]) -> None:
        if seq is not None:
            assert self.journal is not None
            self.journal.progress.add(seq, len(routed))
        for runtime, endpoint, item, data in routed:
            runtime.delivery.enqueue(endpoint, item, data, ack=seq)
        if seq is not None:
            self.journal.progress.seal(seq)  # type: ignore[union-attr]

    # --- the hot path --------------------------------------------------------------

    def _process(
        self, event: Event, now: int, routed: list[Routed], touched: dict[str, dict[str, Any]]
    ) -> None:
        user = event.amplitude_user
        profiles = self.profiles
        new_user = profiles.is_new(user)
        profile = profiles.get(user)
        adopted = _NO_CHANGE
        if new_user and event.user_id and event.device_id:
            adopted = self._adopt_device_profile(event.device_id, profile)
        changed: Set[str] = (
            apply_user_properties(profile, event.user_properties)
            if event.user_properties
            else _NO_CHANGE
        )
        if adopted:
            changed = adopted | changed
        if changed or new_user:
            profiles.mark_dirty(user)
            touched[user] = profile
        encode = _item_encoder.encode
        for runtime in self.syncs:
            stats = runtime.stats
            # The user first: Iterable needs it before the events that name it.
            user_route = route_user(event, profile, changed, new_user, runtime.compiled)
            if user_route.item is not None:
                routed.append((runtime, Endpoint.BULK_UPDATE, user_route.item, encode(user_route.item)))
                stats.users_routed += 1
            elif user_route.skipped is SkipReason.NO_IDENTITY:
                stats.skipped["user_no_identity"] += 1
            event_route = route_event(event, profile, runtime.compiled, now)
            if event_route.item is not None:
                routed.append((runtime, Endpoint.TRACK_BULK, event_route.item, encode(event_route.item)))
                stats.events_routed += 1
            elif event_route.skipped is not None:
                stats.skipped[event_route.skipped.name.lower()] += 1

    def _adopt_device_profile(self, device: str, profile: dict[str, Any]) -> frozenset[str]:
        """A user seen for the first time on a device that already has a profile takes it
        over, as Amplitude merges an anonymous device into the user who logs in on it: an
        email given before sign-up still reaches that user's events. Only for new users,
        so the extra look-up is paid once per user, not once per event."""
        if self.profiles.is_new(device):
            return _NO_CHANGE
        anonymous = self.profiles.get(device)
        profile.update(anonymous)
        return frozenset(anonymous)

    def _settled(self, items: list[Queued], delivered: bool) -> None:
        """Delivery is done with these items: their journal records may be checkpointed."""
        if self.journal is None:
            return
        progress = self.journal.progress
        for queued in items:
            if queued.ack is not None:
                progress.settle(queued.ack)

    # --- lifecycle -----------------------------------------------------------------

    async def recover(self) -> int:
        """Replay what the journal holds past its checkpoint; the number of records."""
        if self.journal is None:
            self.recovering = False
            return 0
        records = await self.journal.open()
        for seq, payload in records:
            try:
                record = _record_decoder.decode(payload)
            except msgspec.DecodeError as error:
                log.error("journal record %d unreadable, skipped: %s", seq, error)
                self.journal.progress.add(seq, 0)
                self.journal.progress.seal(seq)
                continue
            await self.profiles.load([user for user, _ in record.profiles])
            for user, properties in record.profiles:
                profile = self.profiles.get(user)
                profile.clear()
                profile.update(properties)
                self.profiles.mark_dirty(user)
            routed: list[Routed] = []
            for entry in record.items:
                runtime = self._by_name.get(entry.sync)
                if runtime is None:
                    log.warning("journal names sync %r, which is not enabled: item dropped", entry.sync)
                    continue
                endpoint = Endpoint(entry.endpoint)
                routed.append((runtime, endpoint, _item_decoders[endpoint].decode(entry.item), entry.item))
            self._enqueue(seq, routed)
        self.replayed_records = len(records)
        self.recovering = False
        if records:
            log.info("journal recovered: %d record(s) replayed", len(records))
        return len(records)

    async def start(self) -> None:
        for runtime in self.syncs:
            await runtime.delivery.start()
        if self.journal is not None:
            self.journal.start()
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("checkpoint failed")

    async def checkpoint(self) -> None:
        """Make profiles durable, then save the journal checkpoint they allow."""
        assert self.journal is not None
        seq = self.journal.last_seq
        await self.profiles.flush()
        self._profiles_durable_seq = seq
        await self.journal.save_checkpoint()

    async def drain(self, timeout: float) -> bool:
        """Send what is queued, for up to `timeout` seconds; True when all of it settled."""
        results = await asyncio.gather(
            *(runtime.delivery.flush(timeout) for runtime in self.syncs)
        )
        return all(results)

    async def stop(self) -> int:
        """Stop delivery, persist profiles and the checkpoint; how many items were left."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        left = 0
        for runtime in self.syncs:
            left += len(await runtime.delivery.stop())
        if self.journal is not None:
            await self.checkpoint()
            await self.journal.close()
        await self.profiles.close()
        return left


def open_journal(config: Config) -> Journal | None:
    if config.storage.durability != "journal":
        return None
    return Journal(Path(config.storage.path) / "journal", config.storage.journal_max_bytes)


async def start_forwarder(config: Config) -> Forwarder:
    """A Forwarder with its journal recovered and delivery running."""
    forwarder = await open_forwarder(config)
    await forwarder.recover()
    await forwarder.start()
    return forwarder


async def open_forwarder(config: Config) -> Forwarder:
    profiles = await open_profile_store(config.storage)
    return Forwarder(config, profiles, open_journal(config))


def build_daemon_app(config: Config, forwarder: Forwarder) -> web.Application:
    """The ingest app plus the operations routes that read the forwarder."""
    app = build_app(config.server, forwarder)
    app.router.add_get("/metrics", metrics_handler(forwarder, app[STATE_KEY]))
    app.router.add_get("/status", status_handler(forwarder))
    return app


async def serve(config: Config, stop: asyncio.Event) -> int:
    """Run until `stop` is set, then drain; the process exit status."""
    forwarder = await open_forwarder(config)
    app = build_daemon_app(config, forwarder)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
    state = app[STATE_KEY]
    watchdog: asyncio.Task[None] | None = None
    interval = systemd.watchdog_interval()
    if interval is not None:
        watchdog = asyncio.create_task(systemd.watchdog_loop(interval), name="watchdog")
    # Serving before recovery, so /healthz answers and /readyz says "not yet".
    await forwarder.recover()
    await forwarder.start()
    state.ready = True
    systemd.notify("READY=1")
    log.info(
        "listening on %s with %d sync(s)",
        config.server.listen,
        len(forwarder.syncs),
        extra={"syncs": [s.config.name for s in forwarder.syncs]},
    )
    await stop.wait()
    # Readiness off and new ingest answered 429 (clients retry elsewhere or later) while
    # the site stays up, so /readyz and /healthz still answer during the drain.
    systemd.notify("STOPPING=1")
    log.info("draining: new requests get 429, queued items are flushed")
    state.ready = False
    state.accepting = False
    drained = await forwarder.drain(config.server.drain_timeout_seconds)
    left = await forwarder.stop()
    await runner.cleanup()
    if watchdog is not None:
        watchdog.cancel()
    if drained:
        log.info("drained: everything accepted was delivered or dead-lettered")
    elif forwarder.journal is not None:
        log.warning("drain timeout: %d item(s) stay in the journal for the next start", left)
    else:
        log.warning("drain timeout: %d item(s) lost (durability = memory)", left)
    return 0


def run(config: Config) -> int:
    """`forwarder run`: one uvloop process until SIGTERM or SIGINT."""
    import uvloop

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(config, stop)

    return uvloop.run(main())
