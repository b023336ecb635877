"""The simulator's knobs, and the run-time changes `POST /_sim/faults` makes to them."""

from __future__ import annotations

import time
from typing import Any

import msgspec


class SimulatorConfig(msgspec.Struct, kw_only=True):
    """Knobs of the fake; mutable at run time (tests assign fields, `/_sim/faults` too)."""

    api_keys: frozenset[str] | None = None  # None accepts any non-empty key
    track_bulk_per_second: float = 10  # Iterable's spec: 10 requests/s per project
    bulk_update_per_second: float = 5  # Iterable's spec: 5 requests/s per project
    update_email_per_second: float = 10  # undocumented in the spec; the daemon's default
    # The project's type: which field identifies users ("email-based", "userid-based",
    # "hybrid"), as Iterable's "Project Types and Unique Identifiers" describes.
    project_type: str = "email-based"
    # A user created (or given a new email) is visible to trackBulk and updateEmail only
    # this many seconds later; before, it is "not found" (Iterable asks for up to 60 s).
    user_visible_after_seconds: float = 0.0
    # Every bulk request is refused with 400 UniqueFieldsLimitExceeded (a project with
    # as many fields as Iterable allows), whatever its items.
    unique_fields_limit_exceeded: bool = False
    max_request_bytes: int = 4_000_000  # Iterable's spec: 4 MB for users/bulkUpdate
    max_events_per_request: int | None = None  # Iterable sets none; for tests of our caps
    max_users_per_request: int | None = None
    error_rate: float = 0.0  # fraction of admitted requests answered 500 (seeded random)
    latency_ms: float = 0.0  # added to every answer
    down_until: float = 0.0  # time.monotonic() until which every request gets 503
    # trackBulk items whose user was never bulkUpdated are reported in notFound*.
    require_user_first: bool = False
    invalid_email_suffix: str = "@invalid.test"  # reported in invalidEmails
    forgotten_email_suffix: str = "@forgotten.test"  # reported in forgottenEmails
    seed: int = 0
    # Event names the project blocks: reported in disallowedEventNames.
    disallowed_event_names: frozenset[str] = frozenset()
    # Refuse (400 RequestFieldsTypesMismatched, naming the item) a request whose item gives
    # a dataFields field another JSON type than before: per event name for events, per
    # project for users, as Iterable does. Off by default: it decodes every event's fields.
    check_field_types: bool = False
    # Iterable documents no Retry-After; with this, 429s and 503s carry one.
    send_retry_after: bool = False
    # Keep every accepted item for tests (`events`, `users`); off for long runs, where
    # only counts and the distinct event ids are kept.
    record_items: bool = True


class FaultsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /_sim/faults`: only the fields given change."""

    error_rate: float | None = None
    latency_ms: float | None = None
    down_for_seconds: float | None = None
    require_user_first: bool | None = None


_FAULTS_DECODER = msgspec.json.Decoder(FaultsUpdate)


def change_faults(config: SimulatorConfig, body: bytes) -> tuple[int, dict[str, Any]]:
    """Apply a `POST /_sim/faults` body to `config`: the status and JSON of the answer."""
    try:
        update = _FAULTS_DECODER.decode(body)
    except msgspec.DecodeError as error:
        return 400, {"error": str(error)}
    if update.error_rate is not None and not 0.0 <= update.error_rate <= 1.0:
        return 400, {"error": "error_rate must be within [0, 1]"}
    for name in ("latency_ms", "down_for_seconds"):
        value = getattr(update, name)
        if value is not None and value < 0:
            return 400, {"error": f"{name} must be 0 or more"}
    if update.error_rate is not None:
        config.error_rate = update.error_rate
    if update.latency_ms is not None:
        config.latency_ms = update.latency_ms
    if update.down_for_seconds is not None:
        config.down_until = time.monotonic() + update.down_for_seconds
    if update.require_user_first is not None:
        config.require_user_first = update.require_user_first
    return 200, {
        "error_rate": config.error_rate,
        "latency_ms": config.latency_ms,
        "down_for_seconds": max(0.0, config.down_until - time.monotonic()),
        "require_user_first": config.require_user_first,
    }
