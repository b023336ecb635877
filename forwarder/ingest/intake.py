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
from typing import Any

import msgspec

from forwarder.config import StorageConfig, SyncConfig
from forwarder.ingest.amplitude import GROUP_IDENTIFY_EVENT, Event
from forwarder.ingest.effects import dedupe_key, profile_update
from forwarder.ingest.route import (
    CompiledSync,
    SkipReason,
    compile_sync,
    identity_update,
    route_event,
    route_user,
)
from forwarder.iterable import Endpoint, Item
from forwarder.store.dedupe import MemorySeenInserts, SeenInserts
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
_UPDATE_EMAIL = Endpoint.UPDATE_EMAIL
_NO_IDENTITY = SkipReason.NO_IDENTITY

# One routed item: (index of its sync, endpoint, item, the item's JSON as sent).
Routed = tuple[int, Endpoint, Item, bytes]


@dataclass
class RouteStats:
    """Per sync: what routing did with the events it saw."""

    events_routed: int = 0
    users_routed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Email changes routed to users/updateEmail.
    email_changes_routed: int = 0
    # Mapped values left out of an item that was sent ("campaignId": not a positive int).
    dropped: Counter[str] = field(default_factory=Counter)


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
    # Records not yet durable whose profiles (or insert_ids) this request read: it builds
    # on them.
    read_from: set[Durable] = field(default_factory=set)
    # The insert_id dedupe keys this request used first, seen once its record is durable.
    seen: set[bytes] = field(default_factory=set)
    # The request's time (Unix seconds): when those keys were seen.
    now: int = 0


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
        self,
        syncs: Sequence[SyncConfig],
        profiles: ProfileStore,
        max_profile_bytes: int,
        seen: SeenInserts | None = None,
    ) -> None:
        self.profiles = profiles
        if seen is None:
            defaults = StorageConfig()
            seen = MemorySeenInserts(defaults.dedupe_max_entries, defaults.dedupe_window_seconds)
        self.seen = seen
        # Dedupe keys of records not yet durable, as `_pending` holds their profiles.
        self._pending_seen: dict[bytes, Durable] = {}
        self.max_profile_bytes = max_profile_bytes
        self.totals = IntakeStats()
        # Every sync's counters by name, kept when a reload removes the sync, so they go
        # on from where they were if it comes back (a metric counter never goes back).
        self._stats_by_name: dict[str, RouteStats] = {}
        self.stats: list[RouteStats] = []
        self._routes: list[tuple[int, CompiledSync, RouteStats]] = []
        self._told_keys: tuple[str, ...] = ()
        self.reconfigure(syncs)
        self._encode = msgspec.json.Encoder().encode
        self._pending: dict[str, tuple[Profile, Durable]] = {}
        # Distinct events without insert_id must get distinct Iterable ids, even when they
        # are byte-identical: each request gets a salt unique to this process's life.
        self._boot = os.urandom(8)
        self._requests = itertools.count()

    def reconfigure(self, syncs: Sequence[SyncConfig]) -> None:
        """Route later requests for these syncs (a reload), in this order: a routed item's
        index is its sync's place in it. Profiles, dedupe and counters stay."""
        self.stats = [self.route_stats(sync.name) for sync in syncs]
        self._routes = [
            (index, compile_sync(sync), stats)
            for index, (sync, stats) in enumerate(zip(syncs, self.stats, strict=True))
        ]
        # Each sync's profile property holding what Iterable was told (route.TOLD_PREFIX).
        self._told_keys = tuple(compiled.told_key for _, compiled, _ in self._routes)

    def route_stats(self, name: str) -> RouteStats:
        """The sync's routing counters, whether it is routed to now or not."""
        stats = self._stats_by_name.get(name)
        if stats is None:
            stats = self._stats_by_name[name] = RouteStats()
        return stats

    async def load(self, events: Iterable[Event]) -> None:
        """Make the profiles of these events' users ready, so `process` does no I/O."""
        users = {event.amplitude_user for event in events}
        users.update(event.device_id for event in events if event.device_id)
        users.discard("")  # a $groupidentify's: it has no user
        await self.profiles.load(users)
        if self.seen.fetches:  # only a shared store: embedded mode hashes no key twice
            keys = {key for key in map(dedupe_key, events) if key is not None}
            await self.seen.fetch(keys)

    def process(self, events: Iterable[Event], now: int, salt: bytes | None = None) -> Intaken:
        """Route loaded events in order; `now` (Unix seconds) dates events without a time.

        `salt` makes the ids of events without insert_id (with each event's index): given,
        the same events get the same ids again (a cluster salts with the stream sequence,
        so a message delivered again after a failover is sent under the same ids); else a
        salt unique to this request in this process's life.
        """
        intaken = Intaken(now=now)
        if salt is None:
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
        for key in intaken.seen:
            self._pending_seen[key] = durable

    def commit(self, intaken: Intaken, durable: Durable | None = None) -> None:
        """The record is durable (or was never staged): its profiles go to the store."""
        store, pending = self.profiles, self._pending
        for user, profile in intaken.touched.items():
            store.put(user, profile)
            staged = pending.get(user)
            if staged is not None and staged[1] is durable:
                del pending[user]
        if intaken.seen:
            self.seen.add(intaken.seen, intaken.now)
            pending_seen = self._pending_seen
            if durable is not None:
                for key in intaken.seen:
                    if pending_seen.get(key) is durable:
                        del pending_seen[key]

    def builds_on_failure(self, intaken: Intaken) -> bool:
        """True when a record this request read profiles from has failed; then the
        pending profiles of every failed record are forgotten."""
        if not any(_failed(durable) for durable in intaken.read_from):
            return False
        self.forget_failed()
        return True

    def forget_failed(self) -> None:
        """Forget the pending profiles (and dedupe keys) of records that failed."""
        failed = [user for user, (_, durable) in self._pending.items() if _failed(durable)]
        for user in failed:
            del self._pending[user]
        unseen = [key for key, durable in self._pending_seen.items() if _failed(durable)]
        for key in unseen:
            del self._pending_seen[key]

    async def restore(self, record: Record) -> None:
        """Put profiles and seen insert_ids back as a replayed record left them."""
        if record.seen:
            self.seen.add(record.seen, record.seen_at)
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

    def _repeated(self, event: Event, now: int, intaken: Intaken) -> bool:
        """Whether the event repeats an insert_id accepted within the dedupe window (or
        earlier in this request); else its key is this request's to record."""
        key = dedupe_key(event)
        if key is None:
            return False
        if key in intaken.seen:
            return True
        staged = self._pending_seen.get(key)
        if staged is not None:
            intaken.read_from.add(staged)  # a repeat only if that record is kept
            return True
        if self.seen.seen(key, now):
            return True
        intaken.seen.add(key)
        return False

    def _skip(self, reason: str) -> None:
        for _, _, stats in self._routes:
            stats.skipped[reason] += 1

    def _process(self, event: Event, now: int, intaken: Intaken, salt: bytes) -> None:
        if event.event_type == GROUP_IDENTIFY_EVENT:
            # Group properties belong to a group, which Iterable has no place for.
            self._skip("group_identify")
            return
        if self._repeated(event, now, intaken):
            # Amplitude ignores it: no profile change, no user update, no event.
            self._skip("duplicate")
            return
        user = event.amplitude_user
        profile, new_user = self._current(user, intaken)
        changed: Set[str] = _NO_CHANGE
        adopt = new_user and event.user_id and event.device_id
        update = profile_update(event, profile)
        if update or adopt:
            working = dict(profile)
            adopted = (
                self._adopt_device_profile(event.device_id, working, intaken)
                if adopt
                else _NO_CHANGE
            )
            told = {key: working[key] for key in self._told_keys if key in working}
            changed = apply_user_properties(working, update) if update else _NO_CHANGE
            if changed:
                changed = _keep_told(working, told, self._told_keys, changed)
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
                change = user_route.email_change
                if change is not None:
                    routed.append((index, _UPDATE_EMAIL, change, encode(change)))
                    stats.email_changes_routed += 1
                if user_route.item is not None:
                    routed.append((index, _BULK_UPDATE, user_route.item, encode(user_route.item)))
                    stats.users_routed += 1
                elif user_route.skipped is _NO_IDENTITY:
                    stats.skipped["user_no_identity"] += 1
                if user_route.told is not None:
                    profile = _tell(user, profile, compiled.told_key, user_route.told, intaken)
            event_route = route_event(event, profile, compiled, now, salt)
            if event_route.item is not None:
                if compiled.identify_before_events and compiled.told_key not in profile:
                    first = identity_update(event, profile, compiled)
                    if first.item is not None and first.told is not None:
                        routed.append((index, _BULK_UPDATE, first.item, encode(first.item)))
                        stats.users_routed += 1
                        profile = _tell(user, profile, compiled.told_key, first.told, intaken)
                routed.append((index, _TRACK_BULK, event_route.item, encode(event_route.item)))
                stats.events_routed += 1
                for name in event_route.dropped:
                    stats.dropped[name] += 1
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


def _keep_told(
    working: Profile, told: dict[str, Any], keys: tuple[str, ...], changed: Set[str]
) -> Set[str]:
    """Undo what a client's operations ($clearAll, $unset, $set of a "$..." key) did to
    the properties recording what Iterable was told: only routing writes them, and
    forgetting one would send an email change as a second user."""
    if changed.isdisjoint(keys):
        return changed
    for key in keys:
        if key in told:
            working[key] = told[key]
        else:
            working.pop(key, None)
    return set(changed).difference(keys)


def _tell(user: str, profile: Profile, key: str, told: str, intaken: Intaken) -> Profile:
    """The profile recording that Iterable was told `told` for this sync (a copy: it is
    committed with the request's record, as every profile change is)."""
    if profile.get(key) == told:
        return profile
    profile = dict(profile)
    profile[key] = told
    intaken.touched[user] = profile
    intaken.changed.setdefault(user, set()).add(key)
    return profile


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
