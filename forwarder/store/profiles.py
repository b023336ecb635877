"""The profile store role: what the intake needs of it, and the in-memory store."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol


class ProfileStore(Protocol):
    """The profile store role: load before use, get, mark changed, flush.

    The in-memory store and SQLite implement it today; a cluster wires another engine.
    """

    async def load(self, users: Collection[str]) -> None:
        """After this, get() of these users needs no I/O."""

    def get(self, user: str) -> dict[str, Any]:
        """The live profile dict (empty for a new user); callers mutate it in place."""

    def is_new(self, user: str) -> bool:
        """True when nothing was ever stored or cached for this user."""

    def mark_changed(self, user: str) -> None:
        """The caller changed this user's dict: persist it."""

    async def flush(self) -> None:
        """Persist every dirty profile now."""

    async def close(self) -> None:
        """Flush and release resources."""


class MemoryProfileStore:
    """Profiles in a dict: durability = "memory"."""

    def __init__(self) -> None:
        self._profiles: dict[str, dict[str, Any]] = {}

    async def load(self, users: Collection[str]) -> None:
        return None

    def get(self, user: str) -> dict[str, Any]:
        profile = self._profiles.get(user)
        if profile is None:
            profile = self._profiles[user] = {}
        return profile

    def is_new(self, user: str) -> bool:
        return user not in self._profiles

    def mark_changed(self, user: str) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
