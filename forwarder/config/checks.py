"""Rules a type cannot say: ranges, unique names, property paths, filter values."""

from __future__ import annotations

import re

from forwarder.config.cluster import check_cluster
from forwarder.config.rails import DEV_ITERABLE_KEYS, targets_iterable
from forwarder.config.schema import (
    MAX_EVENTS_PER_REQUEST_CEILING,
    MIN_DEAD_LETTER_BYTES,
    Config,
    ServerConfig,
)
from forwarder.config.section import check_positive
from forwarder.config.sync import (
    PROPERTY_PREFIXES,
    VALUE_OPS,
    DeliveryConfig,
    EventsConfig,
    LimitsConfig,
    MappingsConfig,
)
from forwarder.errors import ConfigError
from forwarder.ingest.amplitude import EVENT_FIELDS
from forwarder.ingest.cors import ANY_ORIGIN, origin_problem

_PATH_HINT = (
    " (use an Amplitude event field such as user_id, event_properties.NAME or user_properties.NAME)"
)


def is_property_path(path: str) -> bool:
    """True for a top-level event field (`user_id`, `country`, ...) and `event_properties.X` /
    `user_properties.X`. A top-level name must be a field the ingest keeps: a typo such as
    `user_Id` would otherwise resolve to nothing on every event, silently."""
    if not path or path != path.strip():
        return False
    for prefix in PROPERTY_PREFIXES:
        if path.startswith(prefix):
            return len(path) > len(prefix)
    return path in EVENT_FIELDS


def _check_admin_listen(server: ServerConfig) -> None:
    admin = server.admin_listen
    if ":" not in admin or not admin.rsplit(":", 1)[1].isdigit():
        raise ConfigError("server.admin_listen", f"expected HOST:PORT, got {admin!r}")
    if not 0 <= server.admin_port < 65536:  # 0: any free port
        raise ConfigError("server.admin_listen", f"port {server.admin_port} is out of range")
    if server.admin_port == server.port != 0 and server.admin_host == server.host:
        raise ConfigError("server.admin_listen", f"is the same address as server.listen ({admin})")


def check_config(config: Config) -> None:
    """Rules a type cannot say: ranges, unique names, property paths, filter values."""
    server = config.server
    listen = server.listen
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError("server.listen", f"expected HOST:PORT, got {listen!r}")
    if not 0 <= server.port < 65536:  # 0: any free port
        raise ConfigError("server.listen", f"port {server.port} is out of range")
    _check_admin_listen(server)
    if not server.api_keys:
        raise ConfigError("server.api_keys", "at least one Amplitude API key is required")
    for i, key in enumerate(server.api_keys):
        if not key:
            raise ConfigError(f"server.api_keys[{i}]", "is empty")
    check_positive(server, "server")
    for i, origin in enumerate(server.allowed_origins):
        problem = origin_problem(origin)
        if problem is not None:
            raise ConfigError(f"server.allowed_origins[{i}]", problem)
    if ANY_ORIGIN in server.allowed_origins and len(server.allowed_origins) > 1:
        raise ConfigError("server.allowed_origins", "'*' allows every origin: list no others")
    if server.max_events_per_request > MAX_EVENTS_PER_REQUEST_CEILING:
        # The event count is checked by a decoder with one slot per allowed event.
        raise ConfigError(
            "server.max_events_per_request",
            f"at most {MAX_EVENTS_PER_REQUEST_CEILING}, got {server.max_events_per_request}",
        )
    if not config.storage.path:
        raise ConfigError("storage.path", "is empty")
    check_positive(config.storage, "storage")
    if config.storage.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES:
        # Below a few letters' worth every dead item would wait: a typo, not a choice.
        raise ConfigError(
            "storage.dead_letter_max_bytes",
            f"at least {MIN_DEAD_LETTER_BYTES}, got {config.storage.dead_letter_max_bytes}",
        )

    if config.cluster is not None:
        check_cluster(config.cluster)

    names: set[str] = set()
    for i, sync in enumerate(config.syncs):
        at = f"syncs[{i}]"
        if not sync.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", sync.name):
            raise ConfigError(f"{at}.name", "use letters, digits, '-', '_' or '.'")
        if sync.name in names:
            raise ConfigError(f"{at}.name", f"duplicate sync name {sync.name!r}")
        names.add(sync.name)
        if sync.enabled and not sync.api_key:
            raise ConfigError(f"{at}.api_key", "is empty")
        if sync.base_url is not None and not re.match(r"https?://[^/]+", sync.base_url):
            raise ConfigError(f"{at}.base_url", "expected an http:// or https:// URL")
        if sync.enabled and sync.api_key in DEV_ITERABLE_KEYS and targets_iterable(sync):
            raise ConfigError(
                f"{at}.api_key",
                f"{sync.api_key!r} is the shipped development key and this sync sends to "
                f"Iterable ({sync.endpoint_base}): set ITERABLE_API_KEY to the project's "
                "server-side key, or point base_url at a simulator",
            )
        _check_mappings(sync.mappings, f"{at}.mappings")
        if sync.project_type == "userid-based" and not sync.mappings.user_id:
            raise ConfigError(
                f"{at}.mappings.user_id",
                "a userid-based project identifies users by userId: it cannot be off",
            )
        _check_events(sync.events, f"{at}.events")
        for j, name in enumerate(sync.users.user_properties):
            _property_name(name, f"{at}.users.user_properties[{j}]")
        _check_limits(sync.limits, f"{at}.limits")
        _check_delivery(sync.delivery, f"{at}.delivery")


def _check_mappings(mappings: MappingsConfig, at: str) -> None:
    for key in ("email", "user_id", "campaign_id", "template_id"):
        path = getattr(mappings, key)
        if key == "user_id" and path == "":
            continue  # the userId mapping turned off
        if path is not None and not is_property_path(path):
            raise ConfigError(f"{at}.{key}", f"not a property path: {path!r}{_PATH_HINT}")
    for source, target in mappings.fields.items():
        if not is_property_path(source):
            raise ConfigError(f"{at}.fields.{source}", f"not a property path{_PATH_HINT}")
        if not target:
            raise ConfigError(f"{at}.fields.{source}", "Iterable field name is empty")


def _check_events(events: EventsConfig, at: str) -> None:
    for j, event_type in enumerate(events.select):
        if not event_type:
            raise ConfigError(f"{at}.select[{j}]", "is empty")
    for j, rule in enumerate(events.where):
        if not is_property_path(rule.field):
            raise ConfigError(
                f"{at}.where[{j}].field", f"not a property path: {rule.field!r}{_PATH_HINT}"
            )
        if rule.op in VALUE_OPS and rule.value is None:
            raise ConfigError(f"{at}.where[{j}].value", f"op {rule.op!r} needs a value")
        if rule.op in ("greater than", "less than") and (
            isinstance(rule.value, bool) or not isinstance(rule.value, (int, float))
        ):
            raise ConfigError(f"{at}.where[{j}].value", f"op {rule.op!r} needs a number")
    for j, name in enumerate(events.event_properties):
        _property_name(name, f"{at}.event_properties[{j}]")
    for j, name in enumerate(events.user_properties):
        _property_name(name, f"{at}.user_properties[{j}]")


def _property_name(name: str, at: str) -> None:
    if not name:
        raise ConfigError(at, "is empty")


def _check_limits(limits: LimitsConfig, at: str) -> None:
    check_positive(limits, at)
    if limits.max_request_bytes < 1024:
        raise ConfigError(f"{at}.max_request_bytes", "must be at least 1024")


def _check_delivery(delivery: DeliveryConfig, at: str) -> None:
    check_positive(delivery, at)
    for key in (
        "max_attempts",
        "max_retry_seconds",
        "outage_pause_after_seconds",
        "not_found_retry_seconds",
        "bisect_extra_requests",
    ):
        if getattr(delivery, key) < 0:
            raise ConfigError(f"{at}.{key}", "must be 0 or more")
    if delivery.outage_probe_max_seconds < delivery.outage_probe_seconds:
        raise ConfigError(f"{at}.outage_probe_max_seconds", "must be at least outage_probe_seconds")
    if not 0 <= delivery.rate_headroom < 0.5:
        raise ConfigError(f"{at}.rate_headroom", "must be in [0, 0.5)")
    if delivery.linger_ms < 0:
        raise ConfigError(f"{at}.linger_ms", "must be 0 or more")
