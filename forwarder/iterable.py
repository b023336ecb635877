"""Iterable's API as we use it: endpoints, the items we send, their bodies, and caps."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from forwarder.config import LimitsConfig, ProjectType


class Endpoint(enum.Enum):
    """The endpoints we send to, by their path under the API base URL."""

    BULK_UPDATE = "users/bulkUpdate"
    TRACK_BULK = "events/trackBulk"
    # Single, not bulk: one email change per request (a batch of one).
    UPDATE_EMAIL = "users/updateEmail"

    @property
    def list_key(self) -> str:
        """The bulk body's key holding the items: {"users": [...]} or {"events": [...]}."""
        return "events" if self is Endpoint.TRACK_BULK else "users"

    @property
    def single(self) -> bool:
        """One item is the whole body (updateEmail), not an element of a list."""
        return self is Endpoint.UPDATE_EMAIL


# Users first: a sync starts its batchers in this order, and every per-endpoint table
# is built from it.
ENDPOINTS = (Endpoint.BULK_UPDATE, Endpoint.UPDATE_EMAIL, Endpoint.TRACK_BULK)


class TrackEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One element of events/trackBulk's `events`."""

    eventName: str
    id: str
    createdAt: int
    email: str | None = None
    userId: str | None = None
    dataFields: dict[str, Any] | None = None
    campaignId: int | None = None
    templateId: int | None = None


class UserUpdate(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One element of users/bulkUpdate's `users`."""

    email: str | None = None
    userId: str | None = None
    dataFields: dict[str, Any] | None = None
    preferUserId: bool | None = None
    mergeNestedObjects: bool | None = None


class UpdateEmail(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The body of users/updateEmail: the user by its current email (or userId), and
    the email it gets. The spec: currentEmail or currentUserId, not both."""

    newEmail: str
    currentEmail: str | None = None
    currentUserId: str | None = None


Item = TrackEvent | UserUpdate | UpdateEmail


def email_key(email: str) -> str:
    return "e:" + email.lower()


def identity_of(item: Item, project_type: ProjectType = "email-based") -> str:
    """The key a user's items are ordered under (its lane): the identifier the project
    finds the user by. Email first in email-based projects, userId first otherwise, so a
    user's update and its events share one lane whatever identifiers each carries. An
    email change is ordered under the identity it changes from."""
    if isinstance(item, UpdateEmail):
        if item.currentEmail:
            return email_key(item.currentEmail)
        return "u:" + (item.currentUserId or "")
    if project_type != "email-based" and item.userId:
        return "u:" + item.userId
    if item.email:
        return email_key(item.email)
    return "u:" + (item.userId or "")


def body_envelope(endpoint: Endpoint) -> tuple[bytes, bytes]:
    """The bytes around the comma-joined encoded items of a request body."""
    if endpoint.single:
        return b"", b""
    return b'{"' + endpoint.list_key.encode() + b'":[', b"]}"


def assemble_body(endpoint: Endpoint, encoded_items: list[bytes]) -> bytes:
    """A request body from items already encoded with msgspec (no re-encoding)."""
    if endpoint.single:
        return encoded_items[0]
    head, tail = body_envelope(endpoint)
    return head + b",".join(encoded_items) + tail


@dataclass(slots=True, frozen=True)
class BatchCaps:
    """What one bulk request may carry: items, and bytes of the whole body."""

    max_items: int
    max_bytes: int

    def item_budget(self, endpoint: Endpoint) -> int:
        """Bytes the encoded items and their commas may take inside the body's envelope."""
        head, tail = body_envelope(endpoint)
        return self.max_bytes - len(head) - len(tail)


def caps_of(limits: LimitsConfig, endpoint: Endpoint) -> BatchCaps:
    if endpoint.single:
        items = 1
    elif endpoint is Endpoint.TRACK_BULK:
        items = limits.max_events_per_request
    else:
        items = limits.max_users_per_request
    return BatchCaps(max_items=items, max_bytes=limits.max_request_bytes)


def rate_of(limits: LimitsConfig, endpoint: Endpoint) -> float:
    """Requests per second the project allows on this endpoint."""
    if endpoint is Endpoint.TRACK_BULK:
        return limits.track_bulk_per_second
    if endpoint is Endpoint.UPDATE_EMAIL:
        return limits.update_email_per_second
    return limits.bulk_update_per_second


def merge_user_updates(first: UserUpdate, then: UserUpdate) -> UserUpdate:
    """One update with the effect of `first` followed by `then`, as Iterable applies
    them: later values win, fields `then` leaves out stay, and with mergeNestedObjects a
    top-level object merges into the one before it rather than replacing it."""
    fields: dict[str, Any] | None = None
    if first.dataFields or then.dataFields:
        fields = dict(first.dataFields or {})
        nested = bool(then.mergeNestedObjects)
        for name, value in (then.dataFields or {}).items():
            old = fields.get(name)
            if nested and isinstance(value, dict) and isinstance(old, dict):
                fields[name] = {**old, **value}
            else:
                fields[name] = value
    return UserUpdate(
        email=then.email or first.email,
        userId=then.userId or first.userId,
        dataFields=fields,
        preferUserId=then.preferUserId if then.preferUserId is not None else first.preferUserId,
        mergeNestedObjects=(
            then.mergeNestedObjects
            if then.mergeNestedObjects is not None
            else first.mergeNestedObjects
        ),
    )
