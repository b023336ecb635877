"""The data's path after validation: intake -> durable log -> delivery, and replay on start.

Accepted events are routed by the intake, written to the durable log as one record per
request, and queued for delivery once the record is durable, in log order. Delivery
acknowledges each item to the log once it is settled; the checkpoint follows. A config
reload (SIGHUP) swaps the syncs between two requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

import msgspec

from forwarder.config import Config, SyncConfig
from forwarder.deliver.deliveries import Deliveries
from forwarder.deliver.rate import RateBudget
from forwarder.deliver.stats import DeliveryStats
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import ConfigError, StorageUnavailable
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake, Intaken, Routed, patches_of
from forwarder.ops.snapshot import Snapshot, sync_snapshot
from forwarder.reload import ConfigSource, diff_configs, enabled_syncs, read_config_file
from forwarder.store.dead_letters import DeadLetterFile, dead_letter_path
from forwarder.store.health import StorageHealth
from forwarder.store.log import DurableLog, ProgressReport
from forwarder.store.orphans import dead_letter_orphans
from forwarder.store.records import Record, RecordItem, decode_item, decode_record, encode_record

log = logging.getLogger("forwarder.daemon")


class Pipeline:
    """What the ingest routes hand accepted events to, and what the daemon starts and stops."""

    def __init__(
        self,
        config: Config,
        intake: Intake,
        durable_log: DurableLog,
        deliveries: Sequence[SyncDelivery],
        storage: StorageHealth | None = None,
        rate: RateBudget | None = None,
    ) -> None:
        self.config = config
        # Off after a storage error (ingest answers 503) until a probe write works.
        self.storage = storage or StorageHealth(None)
        self.intake = intake
        self.log = durable_log
        # Without a rate budget the syncs cannot be reloaded (a pipeline built by hand).
        self.fleet = Deliveries(deliveries, rate, None if rate is None else self._new_delivery)
        self._rate = rate
        # The active deliveries, in the enabled syncs' order (a new list on each reload).
        self.deliveries = self.fleet.active
        # The file the config came from, once the daemon says (what SIGHUP re-reads).
        self.config_source: ConfigSource | None = None
        # The last record appended: a delivery a reload retires drains once it is durable.
        self._last_append: asyncio.Future[int] | None = None
        # Items recovery found for syncs no longer configured, dead-lettered: per sync name.
        self.unconfigured_dead_letters: dict[str, int] = {}
        # Journal records replayed at the last start (shown in /status).
        self.replayed_records = 0
        # True until recover() ran: ingest waits (429) so new records follow replayed ones.
        self.recovering = True
        # Requests are processed one at a time so profiles change in arrival order.
        self._lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None

    # --- for the ingest routes -----------------------------------------------------

    def refusal(self, count: int) -> str | None:
        if self.recovering:
            return "Recovering the journal: retry shortly"
        if self.log.full:
            return "Journal disk cap reached: retry later"
        for delivery in self.deliveries:
            if not delivery.has_room():
                return f"Too many queued events for sync {delivery.name}: retry later"
        return None

    async def accept(self, events: list[Event]) -> None:
        """Route events and return once their record is as durable as the config asks.

        Raises StorageUnavailable when it is not, and then nothing of the request is kept.
        """
        async with self._lock:
            if self.storage.refusing:
                raise StorageUnavailable(str(self.storage.fault))
            try:
                await self.intake.load(events)
            except StorageUnavailable as error:
                self.storage.failed(error, "profiles")
                raise
            intaken = self.intake.process(events, int(time.time()))
            if self.intake.builds_on_failure(intaken):
                raise StorageUnavailable("an earlier request could not be stored: retry")
            if not (intaken.routed or intaken.touched or intaken.seen or intaken.read_from):
                # Nothing to deliver, no profile changed, no insert_id new, and nothing
                # read from a record not yet durable: nothing to keep or wait for. (A
                # request of repeats of such a record's insert_ids appends an empty record:
                # it fails if that one does, so the client resends and nothing is lost.)
                return
            payload = self._record(intaken) if self.log.durable else b""
            # Appended under the lock so log order is processing order.
            durable = self.log.append(payload, len(intaken.routed))
            self._last_append = durable
            self.intake.stage(intaken, durable)
            # Committed when durable, in log order, even if this request's handler is
            # cancelled meanwhile (hence the callback and the shield). The items go to the
            # deliveries they were routed for, even if a reload comes in between.
            durable.add_done_callback(
                functools.partial(self._record_settled, intaken, self.deliveries)
            )
        try:
            await asyncio.shield(durable)
        except StorageUnavailable as error:
            self.storage.failed(error, "journal")
            raise

    def _record(self, intaken: Intaken) -> bytes:
        names = [delivery.name for delivery in self.deliveries]
        items = [
            RecordItem(names[i], endpoint.value, data) for i, endpoint, _, data in intaken.routed
        ]
        return encode_record(
            Record(items, patches=patches_of(intaken), seen=list(intaken.seen), seen_at=intaken.now)
        )

    def _record_settled(
        self, intaken: Intaken, deliveries: list[SyncDelivery], durable: asyncio.Future[int]
    ) -> None:
        if durable.cancelled() or durable.exception() is not None:
            # The client was refused: nothing of it is owed, and no profile keeps it.
            self.intake.forget_failed()
            return
        self.intake.commit(intaken, durable)
        self._enqueue(deliveries, intaken.routed, durable.result() if self.log.durable else None)

    def _enqueue(
        self, deliveries: list[SyncDelivery], routed: list[Routed], seq: int | None
    ) -> None:
        for index, endpoint, item, data in routed:
            deliveries[index].enqueue(endpoint, item, data, seq)

    # --- a config reload -----------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file (SIGHUP); True when the new config is in force.

        A file that cannot be read or used is refused with one error line naming the
        problem, and the config in force stays.
        """
        source = self.config_source
        if source is None:
            log.error("config reload refused: the daemon was not started from a config file")
            return False
        try:
            loaded = read_config_file(source.path)
        except ConfigError as error:
            source.refuse(str(error))
            log.error("config reload refused, the config in force stays: %s", error)
            return False
        await self.apply_config(loaded.config)
        source.loaded(loaded.sha256)
        return True

    async def apply_config(self, config: Config) -> None:
        """Put a new config's syncs in force between two requests.

        Items already routed keep the syncs they were routed for; [server] and [storage]
        stay as they are until a restart (one warning names what differs).
        """
        async with self._lock:
            change = diff_configs(self.config, config)
            if change.needs_restart:
                log.warning(
                    "config reload: %s changed and only take effect at a restart; the "
                    "values in force stay",
                    ", ".join(change.needs_restart),
                    extra={"keys": change.needs_restart},
                )
            syncs = enabled_syncs(change.effective)
            self.deliveries = await self.fleet.reconfigure(syncs, self._last_append)
            self.intake.reconfigure(syncs)
            self.config = change.effective
        log.info(
            "config reloaded: %s",
            change.summary,
            extra={"added": change.added, "removed": change.removed, "changed": change.changed},
        )

    def _new_delivery(self, sync: SyncConfig, stats: DeliveryStats) -> SyncDelivery:
        """A delivery for a sync a reload adds, wired as the daemon wires them at start."""
        assert self._rate is not None
        return SyncDelivery(
            sync,
            self._rate,
            self._dead_letter_file(sync.name),
            acknowledge=self.log.acknowledge,
            stats=stats,
        )

    def _dead_letter_file(self, sync: str) -> DeadLetterFile:
        storage = self.config.storage
        return DeadLetterFile(
            dead_letter_path(storage.path, sync),
            fsync=storage.durability == "journal",
            max_bytes=storage.dead_letter_max_bytes,
        )

    async def reload_on(self, requested: asyncio.Event) -> None:
        """Reload each time `requested` is set (the daemon's SIGHUP handler sets it)."""
        while True:
            await requested.wait()
            requested.clear()
            try:
                await self.reload()
            except Exception:  # a bug must not end reloading, nor the daemon
                log.exception("config reload failed")

    # --- lifecycle -----------------------------------------------------------------

    async def recover(
        self,
        reading: ProgressReport | None = None,
        replaying: ProgressReport | None = None,
    ) -> int:
        """Replay what the log holds past its checkpoint; the number of records.

        `reading(bytes, of_bytes)` and `replaying(records, of_records)` hear how far it got
        (the daemon tells systemd, so a long replay does not hit the start timeout).
        """
        records = await self.log.recover(reading)
        total = len(records)
        index_of = {delivery.name: index for index, delivery in enumerate(self.deliveries)}
        # Items of syncs no longer configured (or disabled), by sync: (seq, item).
        orphans: dict[str, list[tuple[int, RecordItem]]] = {}
        for done, (seq, payload) in enumerate(records):
            if replaying is not None:
                replaying(done, total)
            try:
                record = decode_record(payload)
            except msgspec.DecodeError as error:
                log.error("journal record %d unreadable, skipped: %s", seq, error)
                self.log.expect(seq, 0)
                continue
            await self.intake.restore(record)
            routed: list[Routed] = []
            for entry in record.items:
                index = index_of.get(entry.sync)
                if index is None:
                    orphans.setdefault(entry.sync, []).append((seq, entry))
                    continue
                endpoint, item = decode_item(entry)
                routed.append((index, endpoint, item, entry.item))
            # The orphans are settled once their dead letters are written (below).
            self.log.expect(seq, len(record.items))
            self._enqueue(self.deliveries, routed, seq)
        for name, entries in orphans.items():
            self._dead_letter_orphans(name, entries)
        self.replayed_records = len(records)
        self.recovering = False
        if records:
            log.info("journal recovered: %d record(s) replayed", len(records))
        return len(records)

    def _dead_letter_orphans(self, sync: str, entries: list[tuple[int, RecordItem]]) -> None:
        """Items the journal holds for a sync no longer configured: its dead letters
        (a replay resends them if it comes back), acknowledged once written."""
        if not dead_letter_orphans(sync, entries, self._dead_letter_file(sync)):
            return
        for seq, _ in entries:
            self.log.acknowledge(seq, 1)
        count = self.unconfigured_dead_letters.get(sync, 0) + len(entries)
        self.unconfigured_dead_letters[sync] = count

    async def start(self) -> None:
        await self.fleet.start()
        self.log.start()
        if self.log.durable:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.storage.checkpoint_interval_seconds)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("checkpoint failed")

    async def checkpoint(self) -> bool:
        """Make profiles durable, then save the log checkpoint they allow.

        False when the disk refused: storage is marked unavailable and the previous
        checkpoint holds, so a restart replays more, never less.
        """
        seq = self.log.last_seq
        try:
            await self.intake.profiles.flush()
        except StorageUnavailable as error:
            self.storage.failed(error, "profile flush")
            return False
        try:
            await self.intake.seen.flush()
        except StorageUnavailable as error:
            self.storage.failed(error, "seen-inserts flush")
            return False
        try:
            await self.log.save_checkpoint(seq)
        except StorageUnavailable as error:
            self.storage.failed(error, "checkpoint")
            return False
        return True

    async def drain(self, timeout: float) -> bool:
        """Send what is queued, for up to `timeout` seconds; True when all of it settled."""
        return await self.fleet.flush(timeout)

    async def stop(self) -> int:
        """Stop delivery, persist profiles and the checkpoint; how many items were left."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        left = await self.fleet.stop()
        saved = await self.checkpoint()
        await self.log.close()
        try:
            await self.intake.profiles.close()
        except Exception as error:  # as in checkpoint(): the engine's own errors
            self.storage.failed(error, "profile flush")
            saved = False
        try:
            await self.intake.seen.close()
        except Exception as error:
            self.storage.failed(error, "seen-inserts flush")
            saved = False
        await self.storage.close()
        if not saved and self.log.durable:
            stats = self.log.stats()
            log.warning(
                "storage unavailable at stop (%s): the journal keeps every record past "
                "checkpoint %d (up to seq %d), replayed at the next start",
                self.storage.fault,
                stats.saved_checkpoint,
                stats.last_seq,
            )
        return left

    # --- for operations ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            durability=self.config.storage.durability,
            recovering=self.recovering,
            replayed_records=self.replayed_records,
            log=self.log.stats() if self.log.durable else None,
            syncs=[
                sync_snapshot(
                    delivery,
                    self.intake.route_stats(delivery.name),
                    draining=delivery.name in self.fleet.draining,
                )
                for delivery in self.fleet.every()
            ],
            disabled_syncs=[s.name for s in self.config.syncs if not s.enabled],
            profile_changes_refused=self.intake.totals.profile_changes_refused,
            storage_fault=self.storage.fault,
            journal_max_bytes=self.config.storage.journal_max_bytes,
            config=self.config_source.snapshot() if self.config_source else None,
            unconfigured_dead_letters=dict(self.unconfigured_dead_letters),
        )
