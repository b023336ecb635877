"""The intake: accepted events -> routed Iterable items and profile changes (the hot path).

The daemon calls it for every accepted request, recovery calls it to put replayed
profiles back, and `bench/hotpath.py` calls it to measure exactly this.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import AbstractSet as Set

import msgspec

from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.route import CompiledSync, SkipReason, compile_sync, route_event, route_user
from forwarder.iterable import Endpoint, Item
from forwarder.store.profile_ops import apply_user_properties
from forwarder.store.profiles import Profile, ProfileStore
from forwarder.store.records import ProfilePatch, Record

_NO_CHANGE: frozenset[str] = frozenset()
_encode_profile = msgspec.msgpack.Encoder().encode
# The durable-log append of the request that made a pending profile: its outcome decides
# whether the profile is committed or forgotten.
Durable = asyncio.Future[int]
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
    """What one request turned into: items in processing order, and its profile changes.

    Nothing of it is in the profile store yet: the caller commits it once the request's
    record is durable, or drops it, so a failed request leaves no trace.
    """

    routed: list[Routed] = field(default_factory=list)
    # The user's profile after this request, for every user it changed or saw first.
    touched: dict[str, Profile] = field(default_factory=dict)
    # The property names each of those users had changed, for the record's patches.
    changed: dict[str, set[str]] = field(default_factory=dict)
    # Records not yet durable whose profiles this request read: it builds on them.
    read_from: set[Durable] = field(default_factory=set)


@dataclass
class IntakeStats:
    """What the intake refused, across syncs."""

    profile_changes_refused: int = 0


class Intake:
    """Routes events for every enabled sync, keeping each user's profile on the way.

    Profiles change on copies. A request's changes wait in `_pending` (so the requests
    after it see them) until its record is durable, then go to the store; if the record
    fails they are forgotten, and a request that read them fails too.
    """

    def __init__(
        self, syncs: Sequence[SyncConfig], profiles: ProfileStore, max_profile_bytes: int
    ) -> None:
        self.profiles = profiles
        self.max_profile_bytes = max_profile_bytes
        self.stats = [RouteStats() for _ in syncs]
        self.totals = IntakeStats()
        self._routes: list[tuple[int, CompiledSync, RouteStats]] = [
            (index, compile_sync(sync), stats)
            for index, (sync, stats) in enumerate(zip(syncs, self.stats, strict=True))
        ]
        self._encode = msgspec.json.Encoder().encode
        self._pending: dict[str, tuple[Profile, Durable]] = {}
        # Distinct events without insert_id must get distinct Iterable ids, even when they
        # are byte-identical: each request gets a salt unique to this process's life.
        self._boot = os.urandom(8)
        self._requests = itertools.count()

    async def load(self, events: Iterable[Event]) -> None:
        """Make the profiles of these events' users ready, so `process` does no I/O."""
        users = {event.amplitude_user for event in events}
        users.update(event.device_id for event in events if event.device_id)
        await self.profiles.load(users)

    def process(self, events: Iterable[Event], now: int) -> Intaken:
        """Route loaded events in order; `now` (Unix seconds) dates events without a time."""
        intaken = Intaken()
        salt = self._boot + next(self._requests).to_bytes(8, "little")
        for index, event in enumerate(events):
            # The salt is only hashed for an event without insert_id: build it only then.
            place = salt if event.insert_id else salt + index.to_bytes(4, "little")
            self._process(event, now, intaken, place)
        return intaken

    # --- after the record's fate is known --------------------------------------------

    def stage(self, intaken: Intaken, durable: Durable) -> None:
        """The request's record is appended: later requests see its profiles."""
        for user, profile in intaken.touched.items():
            self._pending[user] = (profile, durable)

    def commit(self, intaken: Intaken, durable: Durable | None = None) -> None:
        """The record is durable (or was never staged): its profiles go to the store."""
        store, pending = self.profiles, self._pending
        for user, profile in intaken.touched.items():
            store.put(user, profile)
            staged = pending.get(user)
            if staged is not None and staged[1] is durable:
                del pending[user]

    def builds_on_failure(self, intaken: Intaken) -> bool:
        """True when a record this request read profiles from has failed; then the
        pending profiles of every failed record are forgotten."""
        if not any(_failed(durable) for durable in intaken.read_from):
            return False
        self.forget_failed()
        return True

    def forget_failed(self) -> None:
        """Forget the pending profiles of records that failed."""
        failed = [user for user, (_, durable) in self._pending.items() if _failed(durable)]
        for user in failed:
            del self._pending[user]

    async def restore(self, record: Record) -> None:
        """Put profiles back as a replayed record left them."""
        store = self.profiles
        await store.load([user for user, _ in record.profiles] + [p.user for p in record.patches])
        for user, properties in record.profiles:  # full states, from older records
            store.put(user, dict(properties))
        for patch in record.patches:
            profile = dict(store.get(patch.user))
            profile.update(patch.set)
            for name in patch.unset:
                profile.pop(name, None)
            store.put(patch.user, profile)

    # --- the hot path ------------------------------------------------------------------

    def _current(self, user: str, intaken: Intaken) -> tuple[Profile, bool]:
        """The user's profile as this request sees it, and whether the user is new."""
        profile = intaken.touched.get(user)
        if profile is not None:
            return profile, False
        staged = self._pending.get(user)
        if staged is not None:
            intaken.read_from.add(staged[1])
            return staged[0], False
        return self.profiles.get(user), self.profiles.is_new(user)

    def _process(self, event: Event, now: int, intaken: Intaken, salt: bytes) -> None:
        user = event.amplitude_user
        profile, new_user = self._current(user, intaken)
        changed: Set[str] = _NO_CHANGE
        adopt = new_user and event.user_id and event.device_id
        if event.user_properties or adopt:
            working = dict(profile)
            adopted = (
                self._adopt_device_profile(event.device_id, working, intaken)
                if adopt
                else _NO_CHANGE
            )
            changed = (
                apply_user_properties(working, event.user_properties)
                if event.user_properties
                else _NO_CHANGE
            )
            if adopted:
                changed = adopted | changed
            if changed:
                if len(_encode_profile(working)) > self.max_profile_bytes:
                    # Amplitude caps user properties too: the change is refused, counted,
                    # and the profile stays as it was.
                    self.totals.profile_changes_refused += 1
                    changed = _NO_CHANGE
                else:
                    profile = working
        updated = bool(changed) or new_user
        if updated:
            intaken.touched[user] = profile
            keys = intaken.changed.get(user)
            if keys is None:
                intaken.changed[user] = set(changed)
            else:
                keys.update(changed)
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
            event_route = route_event(event, profile, compiled, now, salt)
            if event_route.item is not None:
                routed.append((index, _TRACK_BULK, event_route.item, encode(event_route.item)))
                stats.events_routed += 1
            elif event_route.skipped is not None:
                stats.skipped[event_route.skipped] += 1

    def _adopt_device_profile(
        self, device: str | None, profile: Profile, intaken: Intaken
    ) -> frozenset[str]:
        """A user seen for the first time on a device that already has a profile takes it
        over, as Amplitude merges an anonymous device into the user who logs in on it: an
        email given before sign-up still reaches that user's events. Only for new users,
        so the extra look-up is paid once per user, not once per event."""
        if not device:
            return _NO_CHANGE
        anonymous, device_new = self._current(device, intaken)
        if device_new:
            return _NO_CHANGE
        profile.update(anonymous)
        return frozenset(anonymous)


def patches_of(intaken: Intaken) -> list[ProfilePatch]:
    """The record's profile changes: only the properties that changed, per user."""
    patches = []
    for user, keys in intaken.changed.items():
        profile = intaken.touched[user]
        present = {key: profile[key] for key in keys if key in profile}
        patches.append(ProfilePatch(user, present, [key for key in keys if key not in profile]))
    return patches


def _failed(durable: Durable) -> bool:
    return durable.done() and (durable.cancelled() or durable.exception() is not None)
