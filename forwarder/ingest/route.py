"""Routing, pure: one event + its user's profile + one sync's config -> Iterable items."""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Callable, Mapping, Set
from typing import Any, Final

import msgspec

from forwarder.config import Filter, ProjectType, SyncConfig
from forwarder.ingest.amplitude import GROUP_IDENTIFY_EVENT, IDENTIFY_EVENT, Event
from forwarder.iterable import TrackEvent, UpdateEmail, UserUpdate
from forwarder.values import as_integer, as_number


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
# A campaign or template id that is present but not a positive integer: left out, counted.
INVALID_ID: Final = _Missing()
# The profile property holding, per sync, the email Iterable was last told for the user
# ("" when it was told a userId alone); absent when it was never told. Amplitude keys that
# start with "$" are operations, never properties, so no client can collide with it, and
# the intake keeps it through $clearAll and $unset.
TOLD_PREFIX: Final = "$iterable:"
_IDENTIFY_TYPES = frozenset({IDENTIFY_EVENT, GROUP_IDENTIFY_EVENT})
_event_encoder = msgspec.json.Encoder(order="deterministic")
# An unambiguous encoding of the ids hashed into an event id: ("ab", "c") and ("a", "bc")
# differ.
_pack_ids = msgspec.msgpack.Encoder().encode

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
    # Mappings left out of the item for a bad value ("campaignId", "templateId").
    dropped: tuple[str, ...] = ()


class UserRoute(msgspec.Struct, frozen=True, gc=False):
    item: UserUpdate | None
    skipped: SkipReason | None
    # An email change to send before `item` (email-based projects: users/updateEmail).
    email_change: UpdateEmail | None = None
    # The email Iterable is told by this route ("" for a userId alone), for the profile.
    told: str | None = None


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


def _id_getter(path: str | None) -> Callable[[Event, Mapping[str, Any]], Any]:
    """A campaignId / templateId getter: a positive int (Iterable's ids are), None when
    absent, INVALID_ID when present but anything else ("abc", 0, -3, 2.5, a bool)."""
    if not path:
        return lambda event, profile: None
    get = getter(path)

    def positive(event: Event, profile: Mapping[str, Any]) -> Any:
        value = get(event, profile)
        if value is MISSING:
            return None
        number = as_integer(value)
        return number if number is not None and number > 0 else INVALID_ID

    return positive


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
        self.project_type: ProjectType = sync.project_type
        self.identity = compile_identity(
            mappings.email, mappings.user_id or None, mappings.require_email, sync.project_type
        )
        # Events carry one identifier ("an email or a userId, but not both"): the one the
        # project finds users by first.
        self.events_by_user_id = sync.project_type != "email-based"
        self.told_key = TOLD_PREFIX + sync.name
        self.identify_before_events = users.identify_before_events
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
        self.campaign_id = _id_getter(mappings.campaign_id)
        self.template_id = _id_getter(mappings.template_id)
        self.fields = tuple((getter(path), name) for path, name in mappings.fields.items())
        # Identity mappings that live in the profile: a change to them is a change of
        # who the user is in Iterable, so it triggers an update.
        self.identity_properties = frozenset(
            path[len("user_properties.") :]
            for path in (mappings.email, mappings.user_id)
            if path and path.startswith("user_properties.")
        )
        # Only email-based projects read preferUserId (the spec).
        self.prefer_user_id = users.prefer_user_id if sync.project_type == "email-based" else None
        self.merge_nested_objects = users.merge_nested_objects


def compile_sync(sync: SyncConfig) -> CompiledSync:
    return CompiledSync(sync)


def event_id(event: Event, salt: bytes) -> str:
    """The Iterable event id: 32 hex characters (Iterable takes 512 bytes, project-wide).

    With insert_id: a hash of user_id, device_id and insert_id. A resend keeps it (an
    update in Iterable, not a second event), and two users' events never share one, as
    the raw insert_id would make them do (Amplitude's is only unique per device).
    Without: the event's content hashed with a salt unique to its place in one request,
    so two identical events stay two events. The journal keeps the encoded item, so a
    resend of a stored record keeps either id."""
    insert_id = event.insert_id
    if insert_id:
        key = _pack_ids((event.user_id, event.device_id, insert_id))
        return hashlib.blake2b(key, digest_size=16).hexdigest()
    digest = hashlib.blake2b(salt, digest_size=16)
    digest.update(_event_encoder.encode(event))
    return digest.hexdigest()


Identity = Callable[[Event, Mapping[str, Any]], "tuple[str | None, str | None] | None"]


def compile_identity(
    email_path: str,
    user_id_path: str | None,
    require_email: bool,
    project_type: ProjectType = "email-based",
) -> Identity:
    """(email, userId) of an event and its profile, or None when no item can be sent:
    the identifier the project type requires is missing (email-based: the email unless
    require_email is off; userid-based: the userId; hybrid: both missing).

    The usual mappings (email from the profile, userId from the event's user_id) get a
    function that reads them directly: it runs for every event and sync.
    """
    if project_type != "email-based":
        require_email = False  # userid-based: the userId is required; hybrid: either
    need_user_id = project_type == "userid-based"
    if email_path.startswith("user_properties.") and user_id_path == "user_id" and not need_user_id:
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
        if need_user_id and user_id is None:
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
    email, user_id = identity
    if sync.events_by_user_id:
        if user_id is not None:
            email = None
    elif email is not None:
        user_id = None
    campaign = sync.campaign_id(event, profile)
    template = sync.template_id(event, profile)
    dropped: tuple[str, ...] = ()
    if campaign is INVALID_ID or template is INVALID_ID:
        dropped = tuple(
            name
            for name, value in (("campaignId", campaign), ("templateId", template))
            if value is INVALID_ID
        )
        campaign = None if campaign is INVALID_ID else campaign
        template = None if template is INVALID_ID else template
    item = TrackEvent(
        eventName=event_type or "",
        id=event_id(event, salt),
        createdAt=event.time // 1000 if event.time is not None else now_seconds,
        email=email,
        userId=user_id,
        dataFields=fields or None,
        campaignId=campaign,
        templateId=template,
    )
    return EventRoute(item, None, dropped)


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
    email, user_id = identity
    change = email_change(sync, profile.get(sync.told_key), email, user_id)
    if change is not None and not (selected_changed or new_user):
        # Only the email changed: updateEmail carries all of it. A bulkUpdate beside it
        # would name the user by an email Iterable may not have moved yet.
        return UserRoute(None, None, change, email or "")
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
        email=email,
        userId=user_id,
        dataFields=fields or None,
        preferUserId=sync.prefer_user_id,
        mergeNestedObjects=sync.merge_nested_objects,
    )
    return UserRoute(item, None, change, email or "")


def email_change(
    sync: CompiledSync, told: Any, email: str | None, user_id: str | None
) -> UpdateEmail | None:
    """The users/updateEmail for a user whose mapped email is no longer the one Iterable
    was told, in the projects that need one: email-based ones, and hybrid ones for a
    user without a userId. Elsewhere the bulkUpdate finds the user by userId and sets the
    new email on it (Iterable's "Updating a User's Email Address or User ID")."""
    if not isinstance(told, str) or email is None or email.lower() == told.lower():
        return None
    if sync.project_type == "userid-based" or (sync.project_type == "hybrid" and user_id):
        return None
    if told:
        return UpdateEmail(newEmail=email, currentEmail=told)
    if user_id:
        return UpdateEmail(newEmail=email, currentUserId=user_id)
    return None


def identity_update(event: Event, profile: Mapping[str, Any], sync: CompiledSync) -> UserRoute:
    """An identity-only bulkUpdate for an event whose user Iterable was never told about
    (identify_before_events), so the user exists before its event; else no item."""
    if not sync.identify_before_events or sync.told_key in profile:
        return UserRoute(None, SkipReason.NO_CHANGE)
    identity = sync.identity(event, profile)
    if identity is None:
        return UserRoute(None, SkipReason.NO_IDENTITY)
    email, user_id = identity
    item = UserUpdate(email=email, userId=user_id, preferUserId=sync.prefer_user_id)
    return UserRoute(item, None, None, email or "")
