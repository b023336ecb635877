"""The set of sync deliveries a config asks for, reconfigured in place by a reload.

A sync that stays keeps its delivery (its lanes, so each user's order, and its counters)
and takes the new settings. A removed or disabled sync gets no new items: its delivery
drains what it holds, then stops. A sync that comes back while draining takes its
delivery back; one that comes back later gets its old counters back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from forwarder.config import SyncConfig
from forwarder.deliver.rate import RateBudget
from forwarder.deliver.stats import DeliveryStats
from forwarder.deliver.sync import SyncDelivery

log = logging.getLogger("forwarder.daemon")

# A new sync's delivery, its counters given (fresh, or those of an earlier life).
NewDelivery = Callable[[SyncConfig, DeliveryStats], SyncDelivery]


class Deliveries:
    """The active deliveries, in the order of the enabled syncs, and the draining ones."""

    def __init__(
        self,
        active: Sequence[SyncDelivery],
        rate: RateBudget | None = None,
        new_delivery: NewDelivery | None = None,
    ) -> None:
        # A list replaced (never changed in place) by a reload: a request routed before
        # it keeps the list it was routed against, so its items reach those deliveries.
        self.active: list[SyncDelivery] = list(active)
        self.draining: dict[str, SyncDelivery] = {}
        self._rate = rate
        self._new_delivery = new_delivery
        self._retired_stats: dict[str, DeliveryStats] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[object]] = set()
        self._started = False

    def every(self) -> list[SyncDelivery]:
        """Active and draining: all that may hold items."""
        return [*self.active, *self.draining.values()]

    async def start(self) -> None:
        self._started = True
        for delivery in self.active:
            await delivery.start()

    async def reconfigure(
        self, syncs: Sequence[SyncConfig], settled: Awaitable[object] | None
    ) -> list[SyncDelivery]:
        """Deliveries for these enabled syncs, in their order (the new active list).

        `settled` completes once every request accepted before this call has queued its
        items: a delivery leaving the active list drains only after that.
        """
        if self._new_delivery is None:
            raise RuntimeError("these deliveries were built without a way to make new ones")
        current = {delivery.name: delivery for delivery in self.every()}
        if self._rate is not None:
            wanted = {sync.name for sync in syncs}
            self._rate.configure(
                [*syncs, *(d.sync for name, d in current.items() if name not in wanted)]
            )
        active: list[SyncDelivery] = []
        for sync in syncs:
            delivery = current.get(sync.name)
            if delivery is None:
                stats = self._retired_stats.pop(sync.name, None) or DeliveryStats()
                delivery = self._new_delivery(sync, stats)
                if self._started:
                    await delivery.start()
            else:
                self._keep(sync.name)
                if delivery.sync != sync:
                    delivery.reconfigure(sync)
            active.append(delivery)
        names = {delivery.name for delivery in active}
        for delivery in self.active:
            if delivery.name not in names:
                self.draining[delivery.name] = delivery
                self._retiring[delivery.name] = asyncio.create_task(
                    self._retire(delivery, settled), name=f"retire-{delivery.name}"
                )
        self.active = active
        return active

    def _keep(self, name: str) -> None:
        """A draining sync is configured again: it takes its delivery back."""
        task = self._retiring.pop(name, None)
        if task is not None:
            task.cancel()
        self.draining.pop(name, None)

    async def _retire(self, delivery: SyncDelivery, settled: Awaitable[object] | None) -> None:
        if settled is not None:
            await asyncio.wait([asyncio.ensure_future(settled)])
        # The settled request's own callback queues its items first: let it run.
        await asyncio.sleep(0)
        log.info(
            "sync %s removed: draining %d queued item(s)",
            delivery.name,
            delivery.lanes.items,
            extra={"sync": delivery.name},
        )
        while not await delivery.flush(60.0):
            pass  # an outage or pause holds it: keep draining, /status says so
        # Out of the set before stopping, so a reload from now on makes a new delivery
        # rather than take back one half stopped.
        self.draining.pop(delivery.name, None)
        self._retiring.pop(delivery.name, None)
        self._retired_stats[delivery.name] = delivery.stats
        stopping = asyncio.create_task(delivery.stop(), name=f"stop-{delivery.name}")
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        log.info("sync %s drained and stopped", delivery.name, extra={"sync": delivery.name})

    async def flush(self, timeout: float) -> bool:
        results = await asyncio.gather(*(d.flush(timeout) for d in self.every()))
        return all(results)

    async def stop(self) -> int:
        """Stop every delivery; how many items were left (the journal keeps them)."""
        for task in self._retiring.values():
            task.cancel()
        await asyncio.gather(*self._retiring.values(), return_exceptions=True)
        self._retiring.clear()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        left = 0
        for delivery in self.every():
            left += len(await delivery.stop())
        return left
