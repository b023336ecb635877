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
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake, Intaken, Routed
from forwarder.ops.snapshot import Snapshot, SyncSnapshot
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
    ) -> None:
        self.config = config
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
        """Route events and return once their record is as durable as the config asks."""
        async with self._lock:
            await self.intake.load(events)
            intaken = self.intake.process(events, int(time.time()))
            if not intaken.routed and not intaken.touched:
                return  # nothing to deliver and no profile changed: nothing to keep
            payload = self._record(intaken) if self.log.durable else b""
            # Appended under the lock so log order is processing order.
            durable = self.log.append(payload, len(intaken.routed))
            # Queued for delivery when durable, in log order, even if this request's
            # handler is cancelled meanwhile (hence the callback and the shield).
            durable.add_done_callback(functools.partial(self._enqueue_durable, intaken.routed))
        await asyncio.shield(durable)

    def _record(self, intaken: Intaken) -> bytes:
        names = [delivery.name for delivery in self.deliveries]
        items = [
            RecordItem(names[i], endpoint.value, data) for i, endpoint, _, data in intaken.routed
        ]
        return encode_record(Record(items, list(intaken.touched.items())))

    def _enqueue_durable(self, routed: list[Routed], durable: asyncio.Future[int]) -> None:
        if durable.cancelled() or durable.exception() is not None:
            return  # the client was refused: nothing of it is owed
        self._enqueue(routed, durable.result() if self.log.durable else None)

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
            await self.intake.restore(record.profiles)
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

    async def checkpoint(self) -> None:
        """Make profiles durable, then save the log checkpoint they allow."""
        seq = self.log.last_seq
        await self.intake.profiles.flush()
        await self.log.save_checkpoint(seq)

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
        await self.checkpoint()
        await self.log.close()
        await self.intake.profiles.close()
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
        )
