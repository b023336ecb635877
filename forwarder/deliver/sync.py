"""Delivery for one sync: lanes -> batchers -> rate budget -> sender -> settlement, tied here."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import msgspec

from forwarder.config import SyncConfig
from forwarder.deliver.batcher import Batcher
from forwarder.deliver.lanes import Lanes, Queued
from forwarder.deliver.origin import LetterOrigin
from forwarder.deliver.patient_budget import PatientBudget
from forwarder.deliver.pause import Pause
from forwarder.deliver.rate import RateBudget, SendStamp
from forwarder.deliver.sender import Sender
from forwarder.deliver.settle import Acknowledge, Settlement
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import ENDPOINTS, BatchCaps, Endpoint, Item, caps_of, identity_of
from forwarder.store.dead_letters import DeadLetterSink

log = logging.getLogger("forwarder.sender")
_encoder = msgspec.json.Encoder()


class SyncDelivery:
    """Everything between routed items and Iterable's answers for one sync."""

    def __init__(
        self,
        sync: SyncConfig,
        rate: RateBudget,
        dead_letters: DeadLetterSink,
        acknowledge: Acknowledge,
        rng: random.Random | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.sync = sync
        self.name = sync.name
        self.lanes = Lanes()
        # Given when the sync had a delivery before (a reload): its counters go on.
        self.stats = stats or DeliveryStats()
        # A shared budget out of reach makes batches wait, never fail.
        rate = PatientBudget(rate, sync.name, self.stats)
        self.pause = Pause(sync, waiting=lambda: self.lanes.items)
        self.settlement = Settlement(sync.name, self.stats, dead_letters, acknowledge)
        self.sender = Sender(sync, rate, self.settlement, self.pause, rng)
        self.caps: dict[Endpoint, BatchCaps] = {e: caps_of(sync.limits, e) for e in ENDPOINTS}
        # Lanes are keyed by the identity rules of the project type in force when the
        # queue was last empty: a project_type changed by a reload waits for that, so one
        # user's items never sit in two lanes.
        self._lane_project_type = sync.project_type
        self._slots = {e: asyncio.Semaphore(sync.delivery.max_in_flight) for e in ENDPOINTS}
        self._batchers = {
            e: Batcher(
                e,
                self.lanes,
                self.caps[e],
                sync.delivery.linger_ms / 1000.0,
                self.pause,
                rate,
                sync.api_key,
                self._slots[e],
                self._launch,
            )
            for e in ENDPOINTS
        }
        self._batcher_tasks: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- intake --------------------------------------------------------------------

    def has_room(self) -> bool:
        delivery = self.sync.delivery
        return (
            self.lanes.items < delivery.max_queued_items
            and self.lanes.bytes < delivery.max_queued_bytes
        )

    def enqueue(
        self,
        endpoint: Endpoint,
        item: Item,
        encoded: bytes | None = None,
        seq: int | None = None,
        origin: LetterOrigin | None = None,
    ) -> None:
        """Queue one item behind its user's earlier items (never blocks).

        `encoded` is the item's JSON when the caller has it already; `seq` is the durable
        log record to acknowledge once the item is settled; `origin` the dead letter a
        replayed item comes from.
        """
        if encoded is None:
            encoded = _encoder.encode(item)
        lane_type = self._lane_project_type
        if lane_type != self.sync.project_type and not (self.lanes.items or self._tasks):
            lane_type = self._lane_project_type = self.sync.project_type
        queued = Queued(identity_of(item, lane_type), endpoint, item, encoded, seq=seq)
        queued.origin = origin
        budget = self.caps[endpoint].item_budget(endpoint)
        if len(encoded) > budget:
            # It could never be sent: say so now rather than block its user's lane.
            detail = f"{len(encoded)} bytes, more than max_request_bytes allows ({budget})"
            self.settlement.dead([(queued, Failure(FailureKind.ITEM_TOO_LARGE, detail))])
            return
        self.lanes.put(queued)
        self._idle.clear()
        self._batchers[endpoint].wake.set()

    def drop(self, doomed: Callable[[Queued], bool]) -> int:
        """Forget the queued items `doomed` picks (in a cluster: a partition this node no
        longer owns, whose new owner delivers them); how many. None is settled."""
        dropped = self.lanes.drop(doomed)
        if not self.lanes.items and not self._tasks:
            self._idle.set()
        return sum(len(queued.originals) for queued in dropped)

    # --- a reload ----------------------------------------------------------------

    def reconfigure(self, sync: SyncConfig) -> None:
        """Put a reloaded sync's settings in force for what is queued and what comes.

        The lanes, and so each user's order, stay as they are: the batchers take the new
        caps, linger and key, the sender the new URL, key and retry policy, the pause the
        new intervals, and the queue caps apply to the next request.
        """
        old = self.sync
        self.sync = sync
        self.pause.reconfigure(sync)
        self.sender.reconfigure(sync)
        self.caps = {e: caps_of(sync.limits, e) for e in ENDPOINTS}
        linger = sync.delivery.linger_ms / 1000.0
        for endpoint, batcher in self._batchers.items():
            batcher.caps = self.caps[endpoint]
            batcher.linger = linger
            batcher.api_key = sync.api_key
            batcher.wake.set()
        grow = sync.delivery.max_in_flight - old.delivery.max_in_flight
        for endpoint, slot in self._slots.items():
            for _ in range(grow):
                slot.release()
            if grow < 0:
                # Fewer requests at once: take the extra slots out as they come free.
                self._batcher_tasks.append(
                    asyncio.create_task(
                        _withdraw(slot, -grow), name=f"slots-{self.name}-{endpoint.value}"
                    )
                )

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.sender.start()
        self._batcher_tasks = [
            asyncio.create_task(batcher.run(), name=f"batcher-{self.name}-{endpoint.value}")
            for endpoint, batcher in self._batchers.items()
        ]

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued without lingering; True when all of it settled in time."""
        for batcher in self._batchers.values():
            batcher.flushing = True
            batcher.wake.set()
        try:
            await asyncio.wait_for(self.wait_idle(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for batcher in self._batchers.values():
                batcher.flushing = False

    async def wait_idle(self) -> None:
        while self.lanes.items or self._tasks or self.settlement.unwritten:
            self._idle.clear()
            try:
                # Dead letters waiting for the disk give no signal when written: look again.
                await asyncio.wait_for(self._idle.wait(), 0.25)
            except TimeoutError:
                pass

    async def stop(self) -> list[Queued]:
        """Stop sending; what was still queued or in flight (the journal keeps it)."""
        tasks = [*self._batcher_tasks, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sender.close()
        self.settlement.close()
        unwritten = [queued for queued, _ in self.settlement.unwritten]
        return self.lanes.drain_all() + unwritten

    # --- one batch -----------------------------------------------------------------

    def _launch(self, endpoint: Endpoint, batch: list[Queued], stamp: SendStamp) -> None:
        task = asyncio.create_task(self._deliver(endpoint, batch, stamp))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _deliver(self, endpoint: Endpoint, batch: list[Queued], stamp: SendStamp) -> None:
        """A batch through the sender; its users stay busy until it is settled."""
        slot = self._slots[endpoint]
        back: list[Queued] = []
        self.stats.in_flight += 1
        try:
            back = await self.sender.send(endpoint, batch, stamp, slot)
        finally:
            self.stats.in_flight -= 1
            slot.release()
            returned = {id(q) for q in back}
            gone = [q for q in batch if id(q) not in returned]
            self.lanes.settle({q.user for q in batch}, back, gone)
            for batcher in self._batchers.values():
                batcher.wake.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception(), extra={"sync": self.name})
        if not self._tasks and not self.lanes.items:
            self._idle.set()


async def _withdraw(slot: asyncio.Semaphore, count: int) -> None:
    """Hold `count` of the slot's permits for good (a lower max_in_flight)."""
    for _ in range(count):
        await slot.acquire()
