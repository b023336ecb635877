"""Per-user ordered lanes for one sync, and taking bulk batches from them (pure, no I/O).

Why lanes and not a fixed number of hashed shards: Iterable needs a user's update
acknowledged before that user's events, and a user's items must reach it in order even
with several requests in flight. So a user with items in flight is *busy*; its later items
wait in its lane until the request that carries the earlier ones is settled. Batches take
the ready users first-come first-served, so one busy user never blocks the others.

An email change (users/updateEmail) sits in the lane of the identity it changes from and
*holds* the lane of the new email until it is settled: the user's later items, which
carry the new email, wait behind it. A user's consecutive bulkUpdate items merge into one
item, so no request carries a user twice (Iterable promises no order inside a request).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from forwarder.deliver.origin import LetterOrigin
from forwarder.iterable import (
    ENDPOINTS,
    BatchCaps,
    Endpoint,
    Item,
    UpdateEmail,
    UserUpdate,
    email_key,
    merge_user_updates,
)

_encode = msgspec.json.Encoder().encode


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
    # Since when, and how often, Iterable answered that it does not find the item's user.
    not_found_since: float | None = None
    not_found_tries: int = 0
    # The queued items merged into this one (consecutive updates of one user), each
    # acknowledged when it is settled; None for an item queued as it is.
    parts: list[Queued] | None = None
    # The dead letter a replayed item comes from (told when it settles); None otherwise.
    origin: LetterOrigin | None = None

    @property
    def originals(self) -> list[Queued]:
        """The items as queued: this one, or the ones merged into it."""
        return self.parts if self.parts is not None else [self]

    @property
    def holds(self) -> str | None:
        """The lane an email change holds until it is settled: its new email's."""
        item = self.item
        return email_key(item.newEmail) if isinstance(item, UpdateEmail) else None


class Lanes:
    """A sync's queued items, one FIFO lane per user, and the users ready per endpoint."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Queued]] = {}
        self._busy: set[str] = set()
        # Lanes held by email changes not yet settled: how many hold each.
        self._held: dict[str, int] = {}
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
        held = queued.holds
        if held is not None and held != queued.user:
            self._held[held] = self._held.get(held, 0) + 1
            self._ready_or_not(held)
        if len(lane) == 1:
            self._ready_or_not(queued.user)

    def _ready_or_not(self, user: str) -> None:
        """Put the user among the ready ones of its head's endpoint, or take it out."""
        lane = self._lanes.get(user)
        for ready in self._ready.values():
            ready.pop(user, None)
        if lane and user not in self._busy and not self._held.get(user):
            head = lane[0]
            self._ready[head.endpoint][user] = head.enqueued_at

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
        merge = endpoint is Endpoint.BULK_UPDATE
        while ready and len(batch) < caps.max_items:
            user = next(iter(ready))
            lane = self._lanes[user]
            took = 0
            while lane and len(batch) < caps.max_items:
                queued = _merged_head(lane, budget) if merge else lane[0]
                if queued.endpoint is not endpoint:
                    break
                cost = len(queued.encoded) + (1 if batch else 0)
                if cost > budget and batch:
                    break
                # Alone it goes even past the budget: only an item queued before a reload
                # lowered max_request_bytes can be that big, and it must not block its lane.
                budget -= cost
                # A merged item stands for the run of lane entries it merged.
                for _ in range(1 if queued is lane[0] else len(queued.originals)):
                    self._count(lane.popleft(), -1)
                batch.append(queued)
                took += 1
                if merge:
                    break  # one item per user per bulkUpdate request
            if took == 0:
                break  # the next user's head item does not fit: this batch is full
            del ready[user]
            self._busy.add(user)
            if took and len(batch) >= caps.max_items:
                break
        return batch

    def settle(
        self, users: set[str], back: list[Queued] | None = None, gone: Iterable[Queued] = ()
    ) -> None:
        """The request carrying these users' items is settled: they may go on.

        `back` holds items that must go out again before anything later of their user
        (a paused sync keeps them); they return to the front of their lanes, in order.
        `gone` holds the items settled for good: an email change among them lets the
        lane it held go.
        """
        if back:
            for queued in reversed(back):
                lane = self._lanes.get(queued.user)
                if lane is None:
                    lane = self._lanes[queued.user] = deque()
                lane.appendleft(queued)
                self._count(queued, +1)
        released = []
        for queued in gone:
            held = queued.holds
            if held is not None and held != queued.user and self._held.get(held):
                self._held[held] -= 1
                if not self._held[held]:
                    del self._held[held]
                    released.append(held)
        self._busy.difference_update(users)
        for user in (*users, *released):
            if self._lanes.get(user):
                self._ready_or_not(user)
            elif user not in self._busy:
                self._lanes.pop(user, None)

    def _count(self, queued: Queued, sign: int) -> None:
        size = len(queued.encoded)
        sign *= len(queued.originals)
        self.items += sign
        self.bytes += sign * size
        self.queued_per_endpoint[queued.endpoint] += sign
        self.bytes_per_endpoint[queued.endpoint] += sign * size

    def drop(self, doomed: Callable[[Queued], bool]) -> list[Queued]:
        """Take the queued items `doomed` picks out of their lanes (in a cluster: those of
        a partition another node now owns, which it delivers); the items taken.

        A merged item goes only when every item merged into it is doomed (else it stays
        whole: the other node sends the doomed part again, under the same ids). Items in
        flight are not queued, so they settle as usual.
        """
        dropped: list[Queued] = []
        touched: set[str] = set()
        for user, lane in self._lanes.items():
            kept = deque(q for q in lane if not all(doomed(o) for o in q.originals))
            if len(kept) != len(lane):
                dropped.extend(q for q in lane if all(doomed(o) for o in q.originals))
                self._lanes[user] = kept
                touched.add(user)
        for queued in dropped:
            self._count(queued, -1)
            held = queued.holds
            if held is not None and held != queued.user and self._held.get(held):
                self._held[held] -= 1
                if not self._held[held]:
                    del self._held[held]
                touched.add(held)
        for user in touched:
            self._ready_or_not(user)
            if not self._lanes.get(user):
                self._lanes.pop(user, None)
        return dropped

    def drain_all(self) -> list[Queued]:
        """Everything still queued (for shutdown accounting), leaving the lanes empty."""
        rest = [q for lane in self._lanes.values() for q in lane]
        for queued in rest:
            self._count(queued, -1)
        self._lanes.clear()
        for ready in self._ready.values():
            ready.clear()
        self._held.clear()
        return rest


def _merged_head(lane: deque[Queued], budget: int) -> Queued:
    """The lane's head, or, when it starts a run of bulkUpdate items, one item merging
    the run (later values win; dataFields merge as Iterable merges them). A run whose
    merge would not fit the request's room gives its head alone."""
    head = lane[0]
    if head.endpoint is not Endpoint.BULK_UPDATE or len(lane) < 2:
        return head
    run = [head]
    for queued in list(lane)[1:]:
        if queued.endpoint is not Endpoint.BULK_UPDATE or queued.parts is not None:
            break
        run.append(queued)
    if len(run) == 1 or head.parts is not None:
        return head
    item = run[0].item
    assert isinstance(item, UserUpdate)
    for queued in run[1:]:
        assert isinstance(queued.item, UserUpdate)
        item = merge_user_updates(item, queued.item)
    encoded = _encode(item)
    if len(encoded) > budget:
        return head
    return Queued(
        head.user,
        Endpoint.BULK_UPDATE,
        item,
        encoded,
        enqueued_at=head.enqueued_at,
        attempts=max(q.attempts for q in run),
        parts=run,
    )
