"""The seen-inserts role: the insert_id keys accepted within a window, bounded in count."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import ClassVar, Protocol


class SeenInserts(Protocol):
    """Which dedupe keys (ingest.effects.dedupe_key) were accepted in the last window.

    Keys are added only once their request's record is durable; a key seen again within
    the window is a repeat, which Amplitude answers 200 and applies nothing of.
    """

    # True when seen() needs fetch() of its keys first (a store kept in another process).
    fetches: ClassVar[bool]

    async def fetch(self, keys: Collection[bytes]) -> None:
        """After this, seen() of these keys needs no I/O (only called when `fetches`)."""

    def seen(self, key: bytes, now: int) -> bool:
        """True when `key` was added less than the window before `now` (Unix seconds)."""

    def add(self, keys: Iterable[bytes], at: int) -> None:
        """Remember `keys` as accepted at `at` (durable at the next flush)."""

    async def flush(self) -> None:
        """Persist the keys added since the last flush."""

    async def close(self) -> None:
        """Flush and release resources."""


class MemorySeenInserts:
    """The keys in memory, oldest first: past `capacity` or the window the oldest go.

    Each key is 16 bytes and its time an int, so the memory bound is the count alone
    (about 150 bytes a key in CPython), however long the client's ids are.
    """

    def __init__(self, capacity: int, window_seconds: int) -> None:
        self.capacity = capacity
        self.window = window_seconds
        # Keys dropped for room before their window ended (a repeat of one is applied).
        self.evicted = 0
        self._at: OrderedDict[bytes, int] = OrderedDict()

    fetches: ClassVar[bool] = False

    async def fetch(self, keys: Collection[bytes]) -> None:
        return None

    def __len__(self) -> int:
        return len(self._at)

    def seen(self, key: bytes, now: int) -> bool:
        at = self._at.get(key)
        return at is not None and now - at < self.window

    def add(self, keys: Iterable[bytes], at: int) -> None:
        table = self._at
        for key in keys:
            table[key] = at
            table.move_to_end(key)  # seen again after its window: a new window, at the end
        while len(table) > self.capacity:
            self._dropped(table.popitem(last=False)[0])
            self.evicted += 1
        self.expire(at)

    def load(self, rows: Iterable[tuple[bytes, int]], now: int) -> None:
        """Take (key, time) rows, oldest first, as a store on disk kept them."""
        self._at.update(rows)
        while len(self._at) > self.capacity:
            self._dropped(self._at.popitem(last=False)[0])
        self.expire(now)

    def expire(self, now: int) -> None:
        """Drop the keys whose window ended by `now` (they are oldest first)."""
        table = self._at
        cutoff = now - self.window
        while table:
            key, at = next(iter(table.items()))
            if at > cutoff:
                return
            del table[key]
            self._dropped(key)

    def _dropped(self, key: bytes) -> None:
        """A key left memory (for room or with its window): a store on disk drops it too."""

    def oldest(self) -> int | None:
        """When the oldest key kept was added; None when none is."""
        return next(iter(self._at.values()), None)

    def newest(self, count: int) -> list[tuple[bytes, int]]:
        """The last `count` keys added, oldest first."""
        table = self._at
        start = max(0, len(table) - count)
        return [item for index, item in enumerate(table.items()) if index >= start]

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
