"""The intake: accepted events -> routed Iterable items and profile changes (the hot path).

The daemon calls it for every accepted request, recovery calls it to put replayed
profiles back, and `bench/hotpath.py` calls it to measure exactly this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import AbstractSet as Set
from typing import Any

import msgspec

from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.route import CompiledSync, SkipReason, compile_sync, route_event, route_user
from forwarder.iterable import Endpoint, Item
from forwarder.store.profile_ops import apply_user_properties
from forwarder.store.profiles import ProfileStore

_NO_CHANGE: frozenset[str] = frozenset()
_TRACK_BULK = Endpoint.TRACK_BULK
_BULK_UPDATE = Endpoint.BULK_UPDATE
_NO_IDENTITY = SkipReason.NO_IDENTITY

# One routed item: (index of its sync, endpoint, item, the item's JSON as sent).
Routed = tuple[int, Endpoint, Item, bytes]


@dataclass
class RouteStats:
    """Per sync: what routing did with the events it saw."""

    events_routed: int = 0
    users_routed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Intaken:
    """What one request turned into: items in processing order, and the profiles it changed."""

    routed: list[Routed]
    touched: dict[str, dict[str, Any]]


class Intake:
    """Routes events for every enabled sync, keeping each user's profile on the way."""

    def __init__(self, syncs: Sequence[SyncConfig], profiles: ProfileStore) -> None:
        self.profiles = profiles
        self.stats = [RouteStats() for _ in syncs]
        self._routes: list[tuple[int, CompiledSync, RouteStats]] = [
            (index, compile_sync(sync), stats)
            for index, (sync, stats) in enumerate(zip(syncs, self.stats, strict=True))
        ]
        self._encode = msgspec.json.Encoder().encode

    async def load(self, events: Iterable[Event]) -> None:
        """Make the profiles of these events' users ready, so `process` does no I/O."""
        await self.profiles.load({event.amplitude_user for event in events})

    def process(self, events: Iterable[Event], now: int) -> Intaken:
        """Route loaded events in order; `now` (Unix seconds) dates events without a time."""
        intaken = Intaken([], {})
        for event in events:
            self._process(event, now, intaken)
        return intaken

    async def restore(self, profiles: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Put profiles back as a replayed record left them."""
        store = self.profiles
        await store.load([user for user, _ in profiles])
        for user, properties in profiles:
            profile = store.get(user)
            profile.clear()
            profile.update(properties)
            store.mark_changed(user)

    def _process(self, event: Event, now: int, intaken: Intaken) -> None:
        user = event.amplitude_user
        profiles = self.profiles
        new_user = profiles.is_new(user)
        profile = profiles.get(user)
        adopted = _NO_CHANGE
        if new_user and event.user_id and event.device_id:
            adopted = self._adopt_device_profile(event.device_id, profile)
        changed: Set[str] = (
            apply_user_properties(profile, event.user_properties)
            if event.user_properties
            else _NO_CHANGE
        )
        if adopted:
            changed = adopted | changed
        updated = bool(changed) or new_user
        if updated:
            profiles.mark_changed(user)
            intaken.touched[user] = profile
        routed = intaken.routed
        encode = self._encode
        for index, compiled, stats in self._routes:
            # The user first: Iterable needs it before the events that name it. With
            # nothing changed there is no update to send (route_user would say so).
            if updated:
                user_route = route_user(event, profile, changed, new_user, compiled)
                if user_route.item is not None:
                    routed.append((index, _BULK_UPDATE, user_route.item, encode(user_route.item)))
                    stats.users_routed += 1
                elif user_route.skipped is _NO_IDENTITY:
                    stats.skipped["user_no_identity"] += 1
            event_route = route_event(event, profile, compiled, now)
            if event_route.item is not None:
                routed.append((index, _TRACK_BULK, event_route.item, encode(event_route.item)))
                stats.events_routed += 1
            elif event_route.skipped is not None:
                stats.skipped[event_route.skipped] += 1

    def _adopt_device_profile(self, device: str, profile: dict[str, Any]) -> frozenset[str]:
        """A user seen for the first time on a device that already has a profile takes it
        over, as Amplitude merges an anonymous device into the user who logs in on it: an
        email given before sign-up still reaches that user's events. Only for new users,
        so the extra look-up is paid once per user, not once per event."""
        if self.profiles.is_new(device):
            return _NO_CHANGE
        anonymous = self.profiles.get(device)
        profile.update(anonymous)
        return frozenset(anonymous)
