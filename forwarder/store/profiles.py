"""The profile store role: what the intake needs of it, and the in-memory store."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Protocol

# A profile as the store hands it out. Callers never change one in place: they put a
# new dict, so a request that fails leaves the stored profiles as they were.
Profile = dict[str, Any]


class ProfileStore(Protocol):
    """The profile store role: load before use, get, put, flush.

    The in-memory store and SQLite implement it today; a cluster wires another engine.
    """

    async def load(self, users: Collection[str]) -> None:
        """After this, get() and is_new() of these users need no I/O."""

    def get(self, user: str) -> Profile:
        """The user's profile (empty for a new user), to read and never to change."""

    def is_new(self, user: str) -> bool:
        """True when nothing was ever stored for this user."""

    def put(self, user: str, profile: Profile) -> None:
        """Replace the user's profile (durable at the next flush)."""

    async def flush(self) -> None:
        """Persist every profile put since the last flush."""

    async def close(self) -> None:
        """Flush and release resources."""


class MemoryProfileStore:
    """Profiles in memory: durability = "memory".

    At most `capacity` users are kept; past it the least recently used is forgotten, and
    its next event finds it new (empty profile, and a user update goes out again).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evicted = 0
        self._profiles: OrderedDict[str, Profile] = OrderedDict()

    async def load(self, users: Collection[str]) -> None:
        return None

    def get(self, user: str) -> Profile:
        profile = self._profiles.get(user)
        if profile is None:
            return {}
        self._profiles.move_to_end(user)
        return profile

    def is_new(self, user: str) -> bool:
        return user not in self._profiles

    def put(self, user: str, profile: Profile) -> None:
        profiles = self._profiles
        profiles[user] = profile
        profiles.move_to_end(user)
        if len(profiles) > self.capacity:
            profiles.popitem(last=False)
            self.evicted += 1

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
