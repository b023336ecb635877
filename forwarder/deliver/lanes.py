"""Per-user ordered lanes for one sync, and taking bulk batches from them (pure, no I/O).

Why lanes and not a fixed number of hashed shards: Iterable needs a user's update
acknowledged before that user's events, and a user's items must reach it in order even
with several requests in flight. So a user with items in flight is *busy*; its later items
wait in its lane until the request that carries the earlier ones is settled. Batches take
the ready users first-come first-served, so one busy user never blocks the others.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from forwarder.iterable import ENDPOINTS, BatchCaps, Endpoint, Item


@dataclass(slots=True, eq=False)
class Queued:
    """One Iterable item on its way: encoded once, resent with the same bytes."""

    user: str
    endpoint: Endpoint
    item: Item
    encoded: bytes
    enqueued_at: float = field(default_factory=time.monotonic)
    attempts: int = 0
    first_attempt_at: float | None = None
    # The durable log record this item came from: acknowledged once it is settled.
    seq: int | None = None


class Lanes:
    """A sync's queued items, one FIFO lane per user, and the users ready per endpoint."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Queued]] = {}
        self._busy: set[str] = set()
        # Users not busy whose head item goes to this endpoint, in the order they became
        # ready, with the time their head item was queued (for the linger deadline).
        self._ready: dict[Endpoint, OrderedDict[str, float]] = {e: OrderedDict() for e in ENDPOINTS}
        self.items = 0
        self.bytes = 0
        self.queued_per_endpoint: dict[Endpoint, int] = {e: 0 for e in ENDPOINTS}
        self.bytes_per_endpoint: dict[Endpoint, int] = {e: 0 for e in ENDPOINTS}

    def __len__(self) -> int:
        return self.items

    def put(self, queued: Queued) -> None:
        lane = self._lanes.get(queued.user)
        if lane is None:
            lane = self._lanes[queued.user] = deque()
        lane.append(queued)
        self._count(queued, +1)
        if len(lane) == 1 and queued.user not in self._busy:
            self._ready[queued.endpoint][queued.user] = queued.enqueued_at

    def oldest_ready(self, endpoint: Endpoint) -> float | None:
        """When the longest-waiting ready user's head item was queued, if any is ready."""
        ready = self._ready[endpoint]
        if not ready:
            return None
        return next(iter(ready.values()))

    def take_batch(self, endpoint: Endpoint, caps: BatchCaps) -> list[Queued]:
        """Fill one request for `endpoint` from the ready users, within both caps.

        Each user taken gives its consecutive head items for this endpoint (kept in
        order inside the request) and becomes busy until `settle` is called for it.
        """
        budget = caps.item_budget(endpoint)
        batch: list[Queued] = []
        ready = self._ready[endpoint]
        while ready and len(batch) < caps.max_items:
            user = next(iter(ready))
            lane = self._lanes[user]
            took = 0
            while lane and len(batch) < caps.max_items:
                queued = lane[0]
                if queued.endpoint is not endpoint:
                    break
                cost = len(queued.encoded) + (1 if batch else 0)
                if cost > budget:
                    break
                budget -= cost
                batch.append(lane.popleft())
                took += 1
            if took == 0:
                break  # the next user's head item does not fit: this batch is full
            del ready[user]
            self._busy.add(user)
            if took and len(batch) >= caps.max_items:
                break
        for queued in batch:
            self._count(queued, -1)
        return batch

    def settle(self, users: set[str], back: list[Queued] | None = None) -> None:
        """The request carrying these users' items is settled: they may go on.

        `back` holds items that must go out again before anything later of their user
        (a paused sync keeps them); they return to the front of their lanes, in order.
        """
        if back:
            for queued in reversed(back):
                lane = self._lanes.get(queued.user)
                if lane is None:
                    lane = self._lanes[queued.user] = deque()
                lane.appendleft(queued)
                self._count(queued, +1)
        for user in users:
            self._busy.discard(user)
            lane = self._lanes.get(user)
            if not lane:
                self._lanes.pop(user, None)
                continue
            head = lane[0]
            self._ready[head.endpoint][user] = head.enqueued_at

    def _count(self, queued: Queued, sign: int) -> None:
        size = len(queued.encoded)
        self.items += sign
        self.bytes += sign * size
        self.queued_per_endpoint[queued.endpoint] += sign
        self.bytes_per_endpoint[queued.endpoint] += sign * size

    def drain_all(self) -> list[Queued]:
        """Everything still queued (for shutdown accounting), leaving the lanes empty."""
        rest = [q for lane in self._lanes.values() for q in lane]
        for queued in rest:
            self._count(queued, -1)
        self._lanes.clear()
        for ready in self._ready.values():
            ready.clear()
        return rest
