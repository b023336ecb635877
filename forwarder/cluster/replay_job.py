"""One sync's cluster replay job: the aside stream's letters go into a SyncDelivery's lanes,
and each leaves the aside once it is settled."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.dead_letters import read_stream
from forwarder.cluster.replay_aside import AsideKeys
from forwarder.deliver.origin import LetterOrigin
from forwarder.deliver.replay_job import REPLAY_WINDOW, ReplayProgress
from forwarder.deliver.sync import SyncDelivery
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import DeadLetter

log = logging.getLogger("forwarder.replay")

# Seconds between removals of settled letters from the aside: one XDEL per batch, and a
# replay killed meanwhile sends at most this much again.
FORGET_SECONDS = 0.5
# Entry ids per XDEL.
FORGET_PAGE = 1000


class ClusterSyncReplay:
    """Feeds one aside stream's letters to `delivery`, a window at a time, and removes each
    from the aside once it is settled (delivered, or written to the sync's stream again)."""

    def __init__(
        self, delivery: SyncDelivery, redis: Redis, aside: AsideKeys, by_kind: Counter[str]
    ) -> None:
        self.delivery = delivery
        self.redis = redis
        self.aside = aside
        self.window = max(1, min(REPLAY_WINDOW, delivery.sync.delivery.max_queued_items // 4))
        self.progress = ReplayProgress(delivery.name, by_kind.total(), by_kind=by_kind)
        self.done = asyncio.Event()
        self._entries: dict[LetterOrigin, str] = {}
        self._settled_entries: list[str] = []
        self._room = asyncio.Event()
        self._read_all = False

    async def run(self) -> None:
        async for stored in read_stream(self.redis, self.aside.stream):
            while len(self._entries) >= self.window:
                self._room.clear()
                await self._room.wait()
            letter = stored.letter
            try:
                assert isinstance(letter, DeadLetter)
                endpoint, item = Endpoint(letter.endpoint), letter.to_item()
            except (AssertionError, ValueError, msgspec.ValidationError):
                # Not an item we can send (edited by hand?): left in the aside, put back.
                self.progress.unsendable += 1
                continue
            origin = LetterOrigin(letter, self._settled)
            self._entries[origin] = stored.entry
            self.progress.resent += 1
            self.delivery.enqueue(endpoint, item, origin=origin)
        self._read_all = True
        self._finish_if_settled()

    def _settled(self, origin: LetterOrigin, delivered: bool) -> None:
        entry = self._entries.pop(origin, None)
        if entry is None:
            return
        self._settled_entries.append(entry)
        if delivered:
            self.progress.delivered += 1
        else:
            self.progress.dead_again += 1
        self._room.set()
        self._finish_if_settled()

    def _finish_if_settled(self) -> None:
        if self._read_all and not self._entries:
            self.done.set()

    async def forget_settled(self) -> None:
        """Remove the settled letters from the aside; kept for the next try when Redis
        does not answer (a put back meanwhile sends them again: twice, not lost)."""
        while self._settled_entries:
            page = self._settled_entries[:FORGET_PAGE]
            try:
                await self.redis.xdel(self.aside.stream, *page)
            except (RedisError, OSError) as error:
                log.warning("cannot remove settled letters from %s: %s", self.aside.stream, error)
                return
            del self._settled_entries[: len(page)]

    async def forget_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.forget_settled()
