"""The data's path after validation: intake -> durable log -> delivery, and replay on start.

Accepted events are routed by the intake, written to the durable log as one record per
request, and queued for delivery once the record is durable, in log order. Delivery
acknowledges each item to the log once it is settled; the checkpoint follows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

import msgspec

from forwarder.config import Config
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import StorageUnavailable
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake, Intaken, Routed, patches_of
from forwarder.ops.snapshot import Snapshot, SyncSnapshot
from forwarder.store.health import StorageHealth
from forwarder.store.log import DurableLog
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
    ) -> None:
        self.config = config
        # Off after a storage error (ingest answers 503) until a probe write works.
        self.storage = storage or StorageHealth(None)
        self.intake = intake
        self.log = durable_log
        self.deliveries = list(deliveries)
        self._index = {delivery.name: index for index, delivery in enumerate(self.deliveries)}
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
            self.intake.stage(intaken, durable)
            # Committed when durable, in log order, even if this request's handler is
            # cancelled meanwhile (hence the callback and the shield).
            durable.add_done_callback(functools.partial(self._record_settled, intaken))
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

    def _record_settled(self, intaken: Intaken, durable: asyncio.Future[int]) -> None:
        if durable.cancelled() or durable.exception() is not None:
            # The client was refused: nothing of it is owed, and no profile keeps it.
            self.intake.forget_failed()
            return
        self.intake.commit(intaken, durable)
        self._enqueue(intaken.routed, durable.result() if self.log.durable else None)

    def _enqueue(self, routed: list[Routed], seq: int | None) -> None:
        deliveries = self.deliveries
        for index, endpoint, item, data in routed:
            deliveries[index].enqueue(endpoint, item, data, seq)

    # --- lifecycle -----------------------------------------------------------------

    async def recover(self) -> int:
        """Replay what the log holds past its checkpoint; the number of records."""
        records = await self.log.recover()
        for seq, payload in records:
            try:
                record = decode_record(payload)
            except msgspec.DecodeError as error:
                log.error("journal record %d unreadable, skipped: %s", seq, error)
                self.log.expect(seq, 0)
                continue
            await self.intake.restore(record)
            routed: list[Routed] = []
            for entry in record.items:
                index = self._index.get(entry.sync)
                if index is None:
                    log.warning(
                        "journal names sync %r, which is not enabled: item dropped", entry.sync
                    )
                    continue
                endpoint, item = decode_item(entry)
                routed.append((index, endpoint, item, entry.item))
            self.log.expect(seq, len(routed))
            self._enqueue(routed, seq)
        self.replayed_records = len(records)
        self.recovering = False
        if records:
            log.info("journal recovered: %d record(s) replayed", len(records))
        return len(records)

    async def start(self) -> None:
        for delivery in self.deliveries:
            await delivery.start()
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
        results = await asyncio.gather(*(d.flush(timeout) for d in self.deliveries))
        return all(results)

    async def stop(self) -> int:
        """Stop delivery, persist profiles and the checkpoint; how many items were left."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        left = 0
        for delivery in self.deliveries:
            left += len(await delivery.stop())
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
                SyncSnapshot(
                    name=delivery.name,
                    enabled=delivery.sync.enabled,
                    api_key=delivery.sync.api_key,
                    endpoint_base=delivery.sync.endpoint_base,
                    route=route,
                    delivery=delivery.stats,
                    caps=delivery.caps,
                    queued_items=delivery.lanes.items,
                    queued_bytes=delivery.lanes.bytes,
                    paused=delivery.pause.reason,
                )
                for delivery, route in zip(self.deliveries, self.intake.stats, strict=True)
            ],
            disabled_syncs=[s.name for s in self.config.syncs if not s.enabled],
            profile_changes_refused=self.intake.totals.profile_changes_refused,
            storage_fault=self.storage.fault,
        )
