"""The config.toml schema, its loading and its checks: the names every caller imports."""

from __future__ import annotations

from forwarder.config.checks import check_config, is_property_path
from forwarder.config.cluster import (
    MAX_PARTITIONS,
    MAX_REPLICAS,
    NATS_SCHEMES,
    REDIS_SCHEMES,
    ClusterConfig,
)
from forwarder.config.loading import expand_env, load_config, parse_config
from forwarder.config.rails import (
    DEV_AMPLITUDE_KEYS,
    DEV_ITERABLE_KEYS,
    config_warnings,
    targets_iterable,
)
from forwarder.config.schema import (
    MAX_EVENTS_PER_REQUEST_CEILING,
    MIN_DEAD_LETTER_BYTES,
    Config,
    ServerConfig,
    StorageConfig,
)
from forwarder.config.section import Positive
from forwarder.config.summary import summarize
from forwarder.config.sync import (
    PROPERTY_PREFIXES,
    VALUE_OPS,
    DeliveryConfig,
    EventsConfig,
    Filter,
    FilterOp,
    LimitsConfig,
    MappingsConfig,
    ProjectType,
    SyncConfig,
    UsersConfig,
)
from forwarder.errors import ConfigError

__all__ = [
    "DEV_AMPLITUDE_KEYS",
    "DEV_ITERABLE_KEYS",
    "MAX_EVENTS_PER_REQUEST_CEILING",
    "MAX_PARTITIONS",
    "MAX_REPLICAS",
    "MIN_DEAD_LETTER_BYTES",
    "NATS_SCHEMES",
    "PROPERTY_PREFIXES",
    "REDIS_SCHEMES",
    "VALUE_OPS",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "EventsConfig",
    "Filter",
    "FilterOp",
    "LimitsConfig",
    "MappingsConfig",
    "Positive",
    "ProjectType",
    "ServerConfig",
    "StorageConfig",
    "SyncConfig",
    "UsersConfig",
    "check_config",
    "config_warnings",
    "expand_env",
    "is_property_path",
    "load_config",
    "parse_config",
    "summarize",
    "targets_iterable",
]
