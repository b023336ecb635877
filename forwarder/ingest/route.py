"""Routing, pure: one event + its user's profile + one sync's config -> Iterable items."""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Callable, Mapping, Set
from typing import Any, Final

import msgspec

from forwarder.config import Filter, SyncConfig
from forwarder.ingest.amplitude import GROUP_IDENTIFY_EVENT, IDENTIFY_EVENT, Event
from forwarder.iterable import TrackEvent, UserUpdate
from forwarder.values import as_integer, as_number


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
_IDENTIFY_TYPES = frozenset({IDENTIFY_EVENT, GROUP_IDENTIFY_EVENT})
_event_encoder = msgspec.json.Encoder(order="deterministic")

Getter = Callable[[Event, Mapping[str, Any]], Any]
Predicate = Callable[[Event, Mapping[str, Any]], bool]


class SkipReason(enum.StrEnum):
    """Why a route made no item; a str, so it is its own metric label."""

    SYNC_DISABLED = "sync_disabled"
    EVENTS_OFF = "events_off"
    USERS_OFF = "users_off"
    IDENTIFY = "identify"
    NOT_SELECTED = "not_selected"
    FILTERED = "filtered"
    NO_IDENTITY = "no_identity"
    NO_CHANGE = "no_change"


# Structs, not NamedTuples: one is made per event and sync, and a Struct is several
# times cheaper to create (profiled on the hot path).
class EventRoute(msgspec.Struct, frozen=True, gc=False):
    item: TrackEvent | None
    skipped: SkipReason | None


class UserRoute(msgspec.Struct, frozen=True, gc=False):
    item: UserUpdate | None
    skipped: SkipReason | None


# --- property paths ---------------------------------------------------------------------


def getter(path: str) -> Getter:
    """A compiled `resolve` for one path: MISSING when absent or null."""
    if path.startswith("user_properties."):
        name = path[len("user_properties.") :]

        def from_profile(event: Event, profile: Mapping[str, Any]) -> Any:
            value = profile.get(name, MISSING)
            return MISSING if value is None else value

        return from_profile
    if path.startswith("event_properties."):
        name = path[len("event_properties.") :]

        def from_event_properties(event: Event, profile: Mapping[str, Any]) -> Any:
            properties = event.event_properties
            if not properties:
                return MISSING
            value = properties.get(name, MISSING)
            return MISSING if value is None else value

        return from_event_properties

    get_field = operator.attrgetter(path)

    def from_field(event: Event, profile: Mapping[str, Any]) -> Any:
        value = get_field(event)
        return MISSING if value is None else value

    return from_field


def _integer_getter(path: str | None) -> Callable[[Event, Mapping[str, Any]], int | None]:
    """An int-valued getter (campaignId, templateId): None when absent or not integral."""
    if not path:
        return lambda event, profile: None
    get = getter(path)

    def integer(event: Event, profile: Mapping[str, Any]) -> int | None:
        return as_integer(get(event, profile))

    return integer


def resolve(path: str, event: Event, profile: Mapping[str, Any]) -> Any:
    return getter(path)(event, profile)


# --- filters ----------------------------------------------------------------------------


def values_equal(actual: Any, expected: Any) -> bool:
    """Equality as a person means it in a filter: 10 == "10" == 10.0, but True != 1."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        if isinstance(actual, bool) and isinstance(expected, bool):
            return actual is expected
        if isinstance(actual, str) and isinstance(expected, bool):
            return actual.lower() == str(expected).lower()
        if isinstance(expected, str) and isinstance(actual, bool):
            return expected.lower() == str(actual).lower()
        return False
    left, right = as_number(actual), as_number(expected)
    if left is not None and right is not None:
        return left == right
    return bool(actual == expected)


def _contains(actual: Any, needle: Any) -> bool:
    # Amplitude's "contains" is a case-insensitive substring match on strings; on a list
    # it is membership (elements compared like `is`, nested lists searched too).
    if isinstance(actual, str):
        return str(needle).lower() in actual.lower()
    if isinstance(actual, list):
        return any(
            _contains(element, needle)
            if isinstance(element, list)
            else values_equal(element, needle)
            for element in actual
        )
    return False


def compile_filter(rule: Filter) -> Predicate:
    """One `where` rule as a closure; a missing property fails all but `is not set`."""
    get = getter(rule.field)
    op = rule.op
    expected = rule.value
    options = expected if isinstance(expected, list) else [expected]

    if op == "is set":
        return lambda e, p: get(e, p) is not MISSING
    if op == "is not set":
        return lambda e, p: get(e, p) is MISSING
    if op in ("is", "is not", "contains", "does not contain"):
        # A value list matches when any option does; the negated ops still fail on MISSING.
        match = values_equal if op in ("is", "is not") else _contains
        want = op in ("is", "contains")

        def matches(e: Event, p: Mapping[str, Any]) -> bool:
            actual = get(e, p)
            if actual is MISSING:
                return False
            return any(match(actual, option) for option in options) is want

        return matches
    bound = as_number(expected)
    greater = op == "greater than"

    def comparison(e: Event, p: Mapping[str, Any]) -> bool:
        actual = as_number(get(e, p))
        if actual is None or bound is None:
            return False
        return actual > bound if greater else actual < bound

    return comparison


# --- the compiled sync ------------------------------------------------------------------


class CompiledSync:
    """A sync's config turned into closures and sets, once, for the hot path."""

    def __init__(self, sync: SyncConfig) -> None:
        self.name = sync.name
        events, users, mappings = sync.events, sync.users, sync.mappings
        self.select_all = "*" in events.select
        self.selected = frozenset(events.select)
        self.filters = [compile_filter(rule) for rule in events.where]
        self.event_properties = tuple(events.event_properties)
        self.event_user_properties = tuple(events.user_properties)
        self.user_properties = tuple(users.user_properties)
        self.user_property_set = frozenset(users.user_properties)
        self.identity = compile_identity(mappings.email, mappings.user_id, mappings.require_email)
        # Why events (or users) of this sync are never sent, known before any event.
        self.events_off = (
            SkipReason.SYNC_DISABLED
            if not sync.enabled
            else None
            if events.enabled
            else SkipReason.EVENTS_OFF
        )
        self.users_off = (
            SkipReason.SYNC_DISABLED
            if not sync.enabled
            else None
            if users.enabled
            else SkipReason.USERS_OFF
        )
        self.campaign_id = _integer_getter(mappings.campaign_id)
        self.template_id = _integer_getter(mappings.template_id)
        self.fields = tuple((getter(path), name) for path, name in mappings.fields.items())
        # Identity mappings that live in the profile: a change to them is a change of
        # who the user is in Iterable, so it triggers an update.
        self.identity_properties = frozenset(
            path[len("user_properties.") :]
            for path in (mappings.email, mappings.user_id)
            if path and path.startswith("user_properties.")
        )
        self.prefer_user_id = users.prefer_user_id
        self.merge_nested_objects = users.merge_nested_objects


def compile_sync(sync: SyncConfig) -> CompiledSync:
    return CompiledSync(sync)


def event_id(event: Event, salt: bytes) -> str:
    """An id for an event without insert_id: its content hashed with a salt unique to its
    place in one request, so two identical events stay two events in Iterable. The
    journal keeps the encoded item, so a resend of a stored record keeps the id."""
    digest = hashlib.blake2b(salt, digest_size=16)
    digest.update(_event_encoder.encode(event))
    return digest.hexdigest()


Identity = Callable[[Event, Mapping[str, Any]], "tuple[str | None, str | None] | None"]


def compile_identity(email_path: str, user_id_path: str | None, require_email: bool) -> Identity:
    """(email, userId) of an event and its profile, or None when no item can be sent.

    The usual mappings (email from the profile, userId from the event's user_id) get a
    function that reads them directly: it runs for every event and sync.
    """
    if email_path.startswith("user_properties.") and user_id_path == "user_id":
        email_name = email_path[len("user_properties.") :]

        def usual(event: Event, profile: Mapping[str, Any]) -> tuple[str | None, str | None] | None:
            email = profile.get(email_name)
            if email.__class__ is not str or "@" not in email:
                email = None
            user_id = event.user_id or None  # a str by the decoder's type
            if email is None and (require_email or user_id is None):
                return None
            return email, user_id

        return usual
    email_of = getter(email_path)
    user_id_of = getter(user_id_path) if user_id_path else None

    def general(event: Event, profile: Mapping[str, Any]) -> tuple[str | None, str | None] | None:
        email = email_of(event, profile)
        if not isinstance(email, str) or "@" not in email:
            email = None
        user_id: str | None = None
        if user_id_of is not None:
            value = user_id_of(event, profile)
            if isinstance(value, str) and value:
                user_id = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                user_id = str(value)
        if email is None and (require_email or user_id is None):
            return None
        return email, user_id

    return general


def _mapped_fields(
    event: Event, profile: Mapping[str, Any], sync: CompiledSync, fields: dict[str, Any]
) -> None:
    for get, name in sync.fields:
        value = get(event, profile)
        if value is not MISSING:
            fields[name] = value


def route_event(
    event: Event, profile: Mapping[str, Any], sync: CompiledSync, now_seconds: int, salt: bytes
) -> EventRoute:
    if sync.events_off is not None:
        return EventRoute(None, sync.events_off)
    event_type = event.event_type
    if event_type in _IDENTIFY_TYPES:
        return EventRoute(None, SkipReason.IDENTIFY)
    if not sync.select_all and event_type not in sync.selected:
        return EventRoute(None, SkipReason.NOT_SELECTED)
    for keep in sync.filters:
        if not keep(event, profile):
            return EventRoute(None, SkipReason.FILTERED)
    identity = sync.identity(event, profile)
    if identity is None:
        return EventRoute(None, SkipReason.NO_IDENTITY)
    fields: dict[str, Any] = {}
    properties = event.event_properties
    if properties:
        for name in sync.event_properties:
            value = properties.get(name)
            if value is not None:
                fields[name] = value
    for name in sync.event_user_properties:
        value = profile.get(name)
        if value is not None:
            fields[name] = value
    for get, name in sync.fields:
        value = get(event, profile)
        if value is not MISSING:
            fields[name] = value
    item = TrackEvent(
        eventName=event_type or "",
        id=event.insert_id or event_id(event, salt),
        createdAt=event.time // 1000 if event.time is not None else now_seconds,
        email=identity[0],
        userId=identity[1],
        dataFields=fields or None,
        campaignId=sync.campaign_id(event, profile),
        templateId=sync.template_id(event, profile),
    )
    return EventRoute(item, None)


def route_user(
    event: Event, profile: Mapping[str, Any], changed: Set[str], new_user: bool, sync: CompiledSync
) -> UserRoute:
    if sync.users_off is not None:
        return UserRoute(None, sync.users_off)
    selected_changed = not changed.isdisjoint(sync.user_property_set) if changed else False
    identity_changed = not changed.isdisjoint(sync.identity_properties) if changed else False
    if not (selected_changed or identity_changed or new_user):
        return UserRoute(None, SkipReason.NO_CHANGE)
    identity = sync.identity(event, profile)
    if identity is None:
        return UserRoute(None, SkipReason.NO_IDENTITY)
    fields: dict[str, Any] = {}
    for name in sync.user_properties:
        value = profile.get(name)
        if value is not None:
            fields[name] = value
        elif name in changed:
            fields[name] = None  # removed: Iterable clears it
    if sync.fields:
        _mapped_fields(event, profile, sync, fields)
    item = UserUpdate(
        email=identity[0],
        userId=identity[1],
        dataFields=fields or None,
        preferUserId=sync.prefer_user_id,
        mergeNestedObjects=sync.merge_nested_objects,
    )
    return UserRoute(item, None)
