"""Routing rules, table-driven: filters, selection, identity, mapping, user updates."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.route import (
    MISSING,
    SkipReason,
    compile_sync,
    event_id,
    identity_update,
    resolve,
    route_event,
    route_user,
)

SALT = b"request-salt-0001"
NOW = 1_800_000_000


def sync(**overrides: Any) -> SyncConfig:
    raw: dict[str, Any] = {"name": "s", "api_key": "k"}
    raw.update(overrides)
    return msgspec.convert(raw, SyncConfig)


def event(**fields: Any) -> Event:
    fields.setdefault("event_type", "Purchase")
    fields.setdefault("user_id", "user-1")
    return msgspec.convert(fields, Event)


PROFILE = {"email": "ada@example.com", "plan": "pro", "tags": ["a", "b"], "age": 37}

FILTERS: list[tuple[str, str, Any, dict[str, Any], bool]] = [
    # field, op, value, event_properties, passes
    ("event_properties.price", "is", 10, {"price": 10}, True),
    ("event_properties.price", "is", 10, {"price": "10"}, True),  # number vs numeric string
    ("event_properties.price", "is", "10", {"price": 10.0}, True),
    ("event_properties.price", "is", 10, {"price": 11}, False),
    ("event_properties.price", "is", 10, {}, False),  # missing
    ("event_properties.flag", "is", True, {"flag": True}, True),
    ("event_properties.flag", "is", 1, {"flag": True}, False),  # a bool is not a number
    ("event_properties.flag", "is", "true", {"flag": True}, True),
    ("event_properties.sku", "is", ["A", "B"], {"sku": "B"}, True),  # any of
    ("event_properties.sku", "is", ["A", "B"], {"sku": "C"}, False),
    ("event_properties.sku", "is not", "A", {"sku": "B"}, True),
    ("event_properties.sku", "is not", "A", {"sku": "A"}, False),
    ("event_properties.sku", "is not", ["A", "B"], {"sku": "B"}, False),  # none of
    ("event_properties.sku", "is not", "A", {}, False),  # missing is false
    ("event_properties.name", "contains", "lov", {"name": "Gloves"}, True),
    ("event_properties.name", "contains", "GLOVE", {"name": "gloves"}, True),  # case-insensitive
    ("event_properties.name", "contains", "hat", {"name": "gloves"}, False),
    ("event_properties.tags", "contains", "b", {"tags": ["a", "b"]}, True),  # list membership
    ("event_properties.tags", "contains", 2, {"tags": [1, [2, 3]]}, True),  # nested lists
    ("event_properties.tags", "contains", "c", {"tags": ["a", "b"]}, False),
    ("event_properties.name", "contains", "x", {}, False),
    ("event_properties.name", "does not contain", "hat", {"name": "gloves"}, True),
    ("event_properties.name", "does not contain", "glo", {"name": "gloves"}, False),
    ("event_properties.name", "does not contain", "x", {}, False),  # missing is false
    ("event_properties.price", "greater than", 10, {"price": 10.5}, True),
    ("event_properties.price", "greater than", 10, {"price": 10}, False),
    ("event_properties.price", "greater than", 10, {"price": "11"}, True),
    ("event_properties.price", "greater than", 10, {"price": "eleven"}, False),
    ("event_properties.price", "greater than", 0, {"price": True}, False),
    ("event_properties.price", "greater than", 10, {}, False),
    ("event_properties.price", "less than", 10, {"price": 9}, True),
    ("event_properties.price", "less than", 10, {"price": 10}, False),
    ("event_properties.price", "less than", 10, {"price": [1]}, False),
    ("event_properties.price", "is set", None, {"price": 0}, True),
    ("event_properties.price", "is set", None, {}, False),
    ("event_properties.price", "is set", None, {"price": None}, False),
    ("event_properties.price", "is not set", None, {}, True),
    ("event_properties.price", "is not set", None, {"price": 1}, False),
    ("user_properties.plan", "is", "pro", {}, True),  # from the profile
    ("user_properties.tags", "contains", "a", {}, True),
    ("user_properties.age", "greater than", 30, {}, True),
    ("user_properties.missing", "is not set", None, {}, True),
    ("country", "is", "Norway", {}, True),  # a top-level field
    ("city", "is set", None, {}, False),
]


@pytest.mark.parametrize(("field", "op", "value", "properties", "passes"), FILTERS)
def test_filter_ops(
    field: str, op: str, value: Any, properties: dict[str, Any], passes: bool
) -> None:
    compiled = compile_sync(sync(events={"where": [{"field": field, "op": op, "value": value}]}))
    routed = route_event(
        event(event_properties=properties, country="Norway"), PROFILE, compiled, NOW, SALT
    )
    assert (routed.item is not None) is passes
    if not passes:
        assert routed.skipped is SkipReason.FILTERED


def test_all_filters_must_hold() -> None:
    where = [
        {"field": "event_properties.price", "op": "greater than", "value": 10},
        {"field": "user_properties.plan", "op": "is", "value": "pro"},
    ]
    compiled = compile_sync(sync(events={"where": where}))
    assert route_event(event(event_properties={"price": 11}), PROFILE, compiled, NOW, SALT).item
    assert not route_event(
        event(event_properties={"price": 11}), {**PROFILE, "plan": "free"}, compiled, NOW, SALT
    ).item


@pytest.mark.parametrize(
    ("select", "event_type", "skipped"),
    [
        (["*"], "Anything", None),
        (["Purchase"], "Purchase", None),
        (["Purchase"], "Viewed", SkipReason.NOT_SELECTED),
        (["*"], "$identify", SkipReason.IDENTIFY),
        (["$identify"], "$identify", SkipReason.IDENTIFY),
        (["*"], "$groupidentify", SkipReason.IDENTIFY),
    ],
)
def test_selection(select: list[str], event_type: str, skipped: SkipReason | None) -> None:
    compiled = compile_sync(sync(events={"select": select}))
    assert (
        route_event(event(event_type=event_type), PROFILE, compiled, NOW, SALT).skipped is skipped
    )


@pytest.mark.parametrize(
    ("profile", "fields", "require_email", "identity"),
    [
        # An event carries one identifier ("an email or a userId, but not both").
        ({"email": "a@b.io"}, {"user_id": "user-1"}, True, ("a@b.io", None)),
        ({}, {"user_id": "user-1"}, True, None),  # no email: not sent by default
        ({}, {"user_id": "user-1"}, False, (None, "user-1")),  # userId alone is enough
        ({}, {"user_id": None, "device_id": "device-1"}, False, None),  # device only
        ({"email": "not-an-email"}, {"user_id": "user-1"}, True, None),
        ({"email": 42}, {"user_id": "user-1"}, True, None),
        ({"email": "a@b.io"}, {"user_id": None, "device_id": "device-1"}, True, ("a@b.io", None)),
    ],
)
def test_identity(
    profile: dict[str, Any],
    fields: dict[str, Any],
    require_email: bool,
    identity: tuple[Any, Any] | None,
) -> None:
    compiled = compile_sync(sync(mappings={"require_email": require_email}))
    routed = route_event(event(**fields), profile, compiled, NOW, SALT)
    if identity is None:
        assert routed.item is None and routed.skipped is SkipReason.NO_IDENTITY
    else:
        assert routed.item is not None and (routed.item.email, routed.item.userId) == identity


def test_numeric_user_id_mapping_becomes_a_string() -> None:
    compiled = compile_sync(
        sync(mappings={"user_id": "user_properties.account", "require_email": False})
    )
    routed = route_event(event(), {"account": 12345}, compiled, NOW, SALT)
    assert routed.item is not None and routed.item.userId == "12345"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7),
        ("7", 7),
        (7.0, 7),
        (" 8 ", 8),
        (7.5, None),
        ("seven", None),
        (True, None),
        (None, None),
        ([7], None),
    ],
)
def test_campaign_and_template_ids_are_integers(value: Any, expected: int | None) -> None:
    compiled = compile_sync(
        sync(mappings={"campaign_id": "event_properties.c", "template_id": "event_properties.t"})
    )
    routed = route_event(
        event(event_properties={"c": value, "t": value}), PROFILE, compiled, NOW, SALT
    )
    assert routed.item is not None
    assert routed.item.campaignId == expected and routed.item.templateId == expected


def test_created_at_is_seconds_and_defaults_to_now() -> None:
    compiled = compile_sync(sync())
    assert (
        route_event(event(time=1_700_000_123_999), PROFILE, compiled, NOW, SALT).item.createdAt
        == 1_700_000_123
    )  # type: ignore[union-attr]
    assert route_event(event(), PROFILE, compiled, NOW, SALT).item.createdAt == NOW  # type: ignore[union-attr]


def test_id_hashes_the_user_and_insert_id_else_the_event_and_its_place() -> None:
    compiled = compile_sync(sync())
    with_insert = route_event(event(insert_id="ins-1"), PROFILE, compiled, NOW, SALT).item
    assert with_insert is not None and re.fullmatch("[0-9a-f]{32}", with_insert.id or "")
    # Another salt (a resend in another request) keeps it.
    assert event_id(event(insert_id="ins-1"), b"another-salt") == with_insert.id
    first = route_event(event(event_properties={"a": 1, "b": 2}), PROFILE, compiled, NOW, SALT).item
    again = route_event(event(event_properties={"a": 1, "b": 2}), PROFILE, compiled, NOW, SALT).item
    other = route_event(event(event_properties={"a": 2, "b": 2}), PROFILE, compiled, NOW, SALT).item
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id
    # Key order does not matter.
    assert first.id == event_id(event(event_properties={"b": 2, "a": 1}), SALT)
    # Another salt (another place in another request): another id for the same content.
    elsewhere = route_event(
        event(event_properties={"a": 1, "b": 2}), PROFILE, compiled, NOW, b"request-salt-0002"
    ).item
    assert elsewhere is not None and elsewhere.id != first.id


def test_data_fields_hold_exactly_the_selected_properties() -> None:
    compiled = compile_sync(
        sync(
            events={"event_properties": ["price", "absent"], "user_properties": ["plan", "gone"]},
            mappings={"fields": {"user_properties.age": "ageYears", "country": "country"}},
        )
    )
    routed = route_event(
        event(event_properties={"price": 5, "secret": "x"}, country="NO"),
        PROFILE,
        compiled,
        NOW,
        SALT,
    )
    assert routed.item is not None
    assert routed.item.dataFields == {"price": 5, "plan": "pro", "ageYears": 37, "country": "NO"}
    none_selected = route_event(
        event(event_properties={"price": 5}), PROFILE, compile_sync(sync()), NOW, SALT
    )
    assert none_selected.item is not None and none_selected.item.dataFields is None


def test_disabled_sync_and_halves() -> None:
    assert (
        route_event(event(), PROFILE, compile_sync(sync(enabled=False)), NOW, SALT).skipped
        is SkipReason.SYNC_DISABLED
    )
    assert (
        route_event(
            event(), PROFILE, compile_sync(sync(events={"enabled": False})), NOW, SALT
        ).skipped
        is SkipReason.EVENTS_OFF
    )
    off = compile_sync(sync(users={"enabled": False, "user_properties": ["plan"]}))
    assert route_user(event(), PROFILE, {"plan"}, False, off).skipped is SkipReason.USERS_OFF


USERS = {"users": {"user_properties": ["plan", "city"]}}


@pytest.mark.parametrize(
    ("changed", "new_user", "sent"),
    [
        ({"plan"}, False, True),  # a selected property changed
        ({"shoe_size"}, False, False),  # only an unselected one
        (set(), False, False),  # nothing
        (set(), True, True),  # a user new to us: create it in Iterable first
        ({"email"}, False, True),  # the mapped identity changed
    ],
)
def test_user_update_triggers(changed: set[str], new_user: bool, sent: bool) -> None:
    routed = route_user(event(), PROFILE, changed, new_user, compile_sync(sync(**USERS)))
    assert (routed.item is not None) is sent
    if not sent:
        assert routed.skipped is SkipReason.NO_CHANGE


def test_user_update_carries_selected_values_and_nulls_removed_ones() -> None:
    compiled = compile_sync(sync(**USERS, mappings={"fields": {"user_properties.age": "ageYears"}}))
    profile = {"email": "ada@example.com", "plan": "team", "age": 37, "unselected": 1}
    routed = route_user(event(), profile, {"plan", "city"}, False, compiled)
    assert routed.item is not None
    assert routed.item.email == "ada@example.com" and routed.item.userId == "user-1"
    assert routed.item.dataFields == {"plan": "team", "city": None, "ageYears": 37}
    assert routed.item.preferUserId is True and routed.item.mergeNestedObjects is True


def test_user_update_without_identity_is_skipped() -> None:
    routed = route_user(event(), {"plan": "pro"}, {"plan"}, False, compile_sync(sync(**USERS)))
    assert routed.item is None and routed.skipped is SkipReason.NO_IDENTITY


def test_resolve_paths() -> None:
    e = event(event_properties={"x": 1}, country="NO")
    assert resolve("event_properties.x", e, {}) == 1
    assert resolve("user_properties.plan", e, PROFILE) == "pro"
    assert resolve("country", e, {}) == "NO"
    assert resolve("city", e, {}) is MISSING
    assert resolve("event_properties.y", e, {}) is MISSING


@pytest.mark.parametrize(
    "weird", [None, [], {}, [[[]]], {"a": {"b": []}}, 1e308, -0.0, "", "\u0000"]
)
def test_odd_values_never_raise(weird: Any) -> None:
    where = [
        {"field": "event_properties.v", "op": op, "value": 1}
        for op in ("is", "is not", "contains", "does not contain", "greater than", "less than")
    ]
    compiled = compile_sync(sync(events={"where": where[:1]}))
    for rule in where:
        compiled = compile_sync(sync(events={"where": [rule]}))
        route_event(event(event_properties={"v": weird}), {"v": weird}, compiled, NOW, SALT)
    route_user(event(), {"email": weird}, {"email"}, True, compile_sync(sync(**USERS)))


# --- identity by project type -------------------------------------------------------

IDENTITY_TABLE: list[tuple[str, dict[str, Any], str | None, tuple[Any, Any] | None, Any]] = [
    # project type, profile, event user_id, event (email, userId), user (email, userId)
    ("email-based", {"email": "a@b.io"}, "u-1", ("a@b.io", None), ("a@b.io", "u-1")),
    ("email-based", {}, "u-1", None, None),  # require_email (the default)
    ("userid-based", {"email": "a@b.io"}, "u-1", (None, "u-1"), ("a@b.io", "u-1")),
    ("userid-based", {"email": "a@b.io"}, None, None, None),  # userId required
    ("userid-based", {}, "u-1", (None, "u-1"), (None, "u-1")),
    ("hybrid", {"email": "a@b.io"}, "u-1", (None, "u-1"), ("a@b.io", "u-1")),
    ("hybrid", {"email": "a@b.io"}, None, ("a@b.io", None), ("a@b.io", None)),
    ("hybrid", {}, "u-1", (None, "u-1"), (None, "u-1")),
]


@pytest.mark.parametrize(("project", "profile", "user_id", "on_event", "on_user"), IDENTITY_TABLE)
def test_each_project_type_gives_each_endpoint_its_identifiers(
    project: str,
    profile: dict[str, Any],
    user_id: str | None,
    on_event: tuple[Any, Any] | None,
    on_user: tuple[Any, Any] | None,
) -> None:
    compiled = compile_sync(sync(project_type=project))
    fields: dict[str, Any] = {"user_id": user_id, "device_id": "device-1"}
    routed = route_event(event(**fields), profile, compiled, NOW, SALT)
    user = route_user(event(**fields), profile, {"email"}, True, compiled)
    if on_event is None:
        assert routed.item is None and user.item is None
        return
    assert routed.item is not None and (routed.item.email, routed.item.userId) == on_event
    assert user.item is not None and (user.item.email, user.item.userId) == on_user
    # preferUserId is read by email-based projects only (the spec).
    assert (user.item.preferUserId is None) is (project != "email-based")


def test_the_user_id_mapping_can_be_turned_off() -> None:
    compiled = compile_sync(sync(mappings={"user_id": ""}))
    user = route_user(event(), {"email": "a@b.io"}, {"email"}, True, compiled)
    assert user.item is not None and (user.item.email, user.item.userId) == ("a@b.io", None)


@pytest.mark.parametrize(
    ("project", "told", "user_id", "change"),
    [
        ("email-based", "old@b.io", "u-1", {"currentEmail": "old@b.io"}),
        ("email-based", "", "u-1", {"currentUserId": "u-1"}),  # told a userId alone
        ("email-based", None, "u-1", None),  # never told: a first update, not a change
        ("email-based", "NEW@b.io", "u-1", None),  # the same email in another case
        ("hybrid", "old@b.io", None, {"currentEmail": "old@b.io"}),
        ("hybrid", "old@b.io", "u-1", None),  # the bulkUpdate finds the user by userId
        ("userid-based", "old@b.io", "u-1", None),
    ],
)
def test_an_email_change_goes_the_project_types_way(
    project: str, told: str | None, user_id: str | None, change: dict[str, str] | None
) -> None:
    compiled = compile_sync(sync(project_type=project, users={"user_properties": ["plan"]}))
    profile: dict[str, Any] = {"email": "new@b.io"}
    if told is not None:
        profile[compiled.told_key] = told
    routed = route_user(event(user_id=user_id), profile, {"email"}, False, compiled)
    assert routed.told == "new@b.io"
    if change is None:
        assert routed.email_change is None and routed.item is not None
        assert routed.item.email == "new@b.io"
    else:
        assert routed.email_change is not None
        assert msgspec.to_builtins(routed.email_change) == {"newEmail": "new@b.io", **change}
        assert routed.item is None  # only the email changed: updateEmail carries it


def test_identity_before_events_sends_an_identity_only_update_once() -> None:
    compiled = compile_sync(sync(users={"enabled": False, "identify_before_events": True}))
    first = identity_update(event(), {"email": "a@b.io"}, compiled)
    assert first.item is not None and first.item.dataFields is None and first.told == "a@b.io"
    told = {"email": "a@b.io", compiled.told_key: "a@b.io"}
    assert identity_update(event(), told, compiled).item is None


@pytest.mark.parametrize(
    ("value", "sent"),
    [(7, 7), ("12", 12), (3.0, 3), (0, None), (-4, None), ("abc", None), (2.5, None), (True, None)],
)
def test_campaign_and_template_ids_are_sent_only_as_positive_integers(
    value: Any, sent: int | None
) -> None:
    compiled = compile_sync(
        sync(
            mappings={
                "campaign_id": "event_properties.c",
                "template_id": "event_properties.t",
            }
        )
    )
    routed = route_event(
        event(event_properties={"c": value, "t": value}), PROFILE, compiled, NOW, SALT
    )
    assert routed.item is not None
    assert (routed.item.campaignId, routed.item.templateId) == (sent, sent)
    assert routed.dropped == (() if sent is not None else ("campaignId", "templateId"))
    absent = route_event(event(), PROFILE, compiled, NOW, SALT)
    assert absent.item is not None and absent.dropped == ()  # absent is not counted
