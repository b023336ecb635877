"""Iterable's bulk API: endpoints, the items we send, the bodies they travel in, and caps."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from forwarder.config import LimitsConfig


class Endpoint(enum.Enum):
    """The two bulk endpoints, by their path under the API base URL."""

    BULK_UPDATE = "users/bulkUpdate"
    TRACK_BULK = "events/trackBulk"

    @property
    def list_key(self) -> str:
        """The body's key holding the items: {"users": [...]} or {"events": [...]}."""
        return "users" if self is Endpoint.BULK_UPDATE else "events"


# Users first: a sync starts its batchers in this order, and every per-endpoint table
# is built from it.
ENDPOINTS = (Endpoint.BULK_UPDATE, Endpoint.TRACK_BULK)


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
    items = (
        limits.max_events_per_request
        if endpoint is Endpoint.TRACK_BULK
        else limits.max_users_per_request
    )
    return BatchCaps(max_items=items, max_bytes=limits.max_request_bytes)


def rate_of(limits: LimitsConfig, endpoint: Endpoint) -> float:
    """Requests per second the project allows on this endpoint."""
    if endpoint is Endpoint.TRACK_BULK:
        return limits.track_bulk_per_second
    return limits.bulk_update_per_second
