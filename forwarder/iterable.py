"""Iterable's bulk wire shapes: the items we send and the request bodies they travel in."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class Endpoint(enum.Enum):
    """The two bulk endpoints, by their path under the API base URL."""

    BULK_UPDATE = "users/bulkUpdate"
    TRACK_BULK = "events/trackBulk"

    @property
    def list_key(self) -> str:
        """The body's key holding the items: {"users": [...]} or {"events": [...]}."""
        return "users" if self is Endpoint.BULK_UPDATE else "events"


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


Item = TrackEvent | UserUpdate


class TrackBulkRequest(msgspec.Struct):
    events: list[TrackEvent]


class BulkUpdateRequest(msgspec.Struct):
    users: list[UserUpdate]


def identity_of(item: Item) -> str:
    """The key Iterable knows a user by, for ordering: email when present, else userId."""
    if item.email:
        return "e:" + item.email.lower()
    return "u:" + (item.userId or "")


def body_envelope(endpoint: Endpoint) -> tuple[bytes, bytes]:
    """The bytes around the comma-joined encoded items of a bulk request body."""
    return b'{"' + endpoint.list_key.encode() + b'":[', b"]}"


def assemble_body(endpoint: Endpoint, encoded_items: list[bytes]) -> bytes:
    """A bulk request body from items already encoded with msgspec (no re-encoding)."""
    head, tail = body_envelope(endpoint)
    return head + b",".join(encoded_items) + tail


def body_size(endpoint: Endpoint, encoded_sizes_total: int, count: int) -> int:
    """Bytes of the body assemble_body makes from `count` items of this many bytes in all."""
    head, tail = body_envelope(endpoint)
    return len(head) + len(tail) + encoded_sizes_total + max(0, count - 1)
