"""When to cut a batch for one endpoint: full, lingered long enough, flushing, or a probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from forwarder.deliver.lanes import Lanes, Queued
from forwarder.deliver.pause import Pause
from forwarder.deliver.rate import RateBudget, SendStamp
from forwarder.iterable import BatchCaps, Endpoint

# Takes a batch cut by the batcher, with its rate stamp and the slot it holds.
Launch = Callable[[Endpoint, list[Queued], SendStamp], None]


# eq=False: a batcher is a running task's state, equal only to itself.
@dataclass(eq=False)
class Batcher:
    """Cuts batches for one endpoint of one sync, within its caps, slots and rate budget.

    A partial batch waits up to `linger` seconds after its oldest item was queued, so low
    traffic still flows; a full one, or any while flushing, goes at once. While the sync
    is paused only one probe batch goes per interval. A reload sets `caps`, `linger` and
    `api_key` in place.
    """

    endpoint: Endpoint
    lanes: Lanes
    caps: BatchCaps
    linger: float
    pause: Pause
    rate: RateBudget
    api_key: str
    slots: asyncio.Semaphore
    launch: Launch
    # Set by whoever has news for this batcher: items queued, a batch settled, a flush.
    wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    flushing: bool = field(default=False, init=False)

    async def run(self) -> None:
        endpoint, lanes = self.endpoint, self.lanes
        while True:
            # Read each turn: a config reload may have changed them.
            caps = self.caps
            oldest = lanes.oldest_ready(endpoint)
            if oldest is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            paused_for = self.pause.wait_before_send(now)
            if paused_for > 0:
                await self._sleep_or_wake(paused_for)
                continue
            full = (
                lanes.queued_per_endpoint[endpoint] >= caps.max_items
                or lanes.bytes_per_endpoint[endpoint] >= caps.max_bytes
            )
            wait = oldest + self.linger - now
            if not full and not self.flushing and wait > 0:
                await self._sleep_or_wake(wait)
                continue
            await self.slots.acquire()
            try:
                stamp = await self.rate.acquire(self.api_key, endpoint)
                batch = lanes.take_batch(endpoint, caps)
            except BaseException:
                self.slots.release()
                raise
            if not batch:
                self.slots.release()
                continue
            self.launch(endpoint, batch, stamp)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except TimeoutError:
            pass
