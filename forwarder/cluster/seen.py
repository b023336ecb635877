"""The seen-inserts role in Redis: insert_id keys every node sees, expiring with the window.

Each key is stored as "<seq>:<at>" (SET NX EX window): the stream sequence of the message
that used it first and when. A key is a repeat only for a later message: the same message
delivered again after a failover finds its own sequence and is processed as the first
time, so a redelivery never turns an event into a duplicate of itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import ClassVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.errors import ClusterUnavailable

DEFAULT_PREFIX = "forwarder:seen"
# Keys remembered locally (found in Redis or added here): each about 200 bytes.
DEFAULT_CAPACITY = 100_000


class SeenStoreUnavailable(ClusterUnavailable):
    """Redis did not answer a dedupe read or write: the caller retries."""


class RedisSeenInserts:
    """SeenInserts shared through Redis. `fetch` reads a request's keys before `seen`
    (which does no I/O) is asked of them; `begin(seq)` names the message being processed."""

    fetches: ClassVar[bool] = True

    def __init__(
        self,
        redis: Redis,
        window_seconds: int,
        prefix: str = DEFAULT_PREFIX,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.redis = redis
        self.window = window_seconds
        self.prefix = prefix
        self.capacity = capacity
        self._seq = 0
        # Keys known to be stored: (seq that used it first, when).
        self._known: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        self._unwritten: dict[bytes, tuple[int, int]] = {}

    def key(self, key: bytes) -> str:
        return f"{self.prefix}:{key.hex()}"

    def begin(self, seq: int) -> None:
        """The seen() and add() calls that follow are for stream sequence `seq`."""
        self._seq = seq

    async def fetch(self, keys: Collection[bytes]) -> None:
        wanted = [k for k in keys if k not in self._known]
        if not wanted:
            return
        try:
            values = await self.redis.mget([self.key(k) for k in wanted])
        except (RedisError, OSError) as error:
            raise SeenStoreUnavailable(
                f"dedupe keys in Redis: {type(error).__name__}: {error}"
            ) from error
        for key, value in zip(wanted, values, strict=True):
            if value is not None:
                text = value.decode() if isinstance(value, bytes) else str(value)
                seq, _, at = text.partition(":")
                self._remember(key, (int(seq), int(at)))

    def seen(self, key: bytes, now: int) -> bool:
        known = self._known.get(key)
        return known is not None and known[0] < self._seq and now - known[1] < self.window

    def add(self, keys: Iterable[bytes], at: int) -> None:
        for key in keys:
            known = self._known.get(key)
            if known is not None and known[0] <= self._seq and at - known[1] < self.window:
                continue  # stored already (a redelivery of the message that used it)
            entry = (self._seq, at)
            self._unwritten[key] = entry
            self._remember(key, entry)

    def _remember(self, key: bytes, entry: tuple[int, int]) -> None:
        known = self._known
        known[key] = entry
        known.move_to_end(key)
        while len(known) > self.capacity:
            known.popitem(last=False)

    async def flush(self) -> None:
        unwritten = self._unwritten
        if not unwritten:
            return
        taken = list(unwritten.items())
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, (seq, at) in taken:
                    # NX: the first message to use a key keeps it, whoever flushes later.
                    pipe.set(self.key(key), f"{seq}:{at}", nx=True, ex=self.window)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise SeenStoreUnavailable(
                f"dedupe keys in Redis: {type(error).__name__}: {error}"
            ) from error
        for key, entry in taken:
            if unwritten.get(key) == entry:
                del unwritten[key]

    async def close(self) -> None:
        await self.flush()
