"""What the operations views read: a snapshot of the pipeline, never its private parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forwarder.deliver.stats import DeliveryStats
from forwarder.deliver.sync import SyncDelivery
from forwarder.ingest.intake import RouteStats
from forwarder.iterable import BatchCaps, Endpoint
from forwarder.store.log import LogStats


@dataclass(frozen=True, slots=True)
class SyncSnapshot:
    name: str
    enabled: bool
    api_key: str
    endpoint_base: str
    route: RouteStats
    delivery: DeliveryStats
    caps: dict[Endpoint, BatchCaps]
    queued_items: int
    queued_bytes: int
    paused: str | None
    # The queue's caps (delivery.max_queued_*): past either, ingest answers 429.
    max_queued_items: int = 0
    max_queued_bytes: int = 0
    # Removed (or disabled) by a config reload: it takes no new items, and leaves once
    # what it holds is delivered or dead-lettered.
    draining: bool = False
    # The sync's dead-letter file on disk, and its cap (storage.dead_letter_max_bytes).
    dead_letter_bytes: int = 0
    dead_letter_max_bytes: int | None = None
    dead_letter_at_cap: bool = False

    @property
    def state(self) -> str:
        if self.paused is not None:
            return "paused"
        if self.draining:
            return "draining"
        if self.queued_items or self.delivery.in_flight:
            return "sending"
        return "idle"


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """The config file in force, and how its reloads went."""

    path: str
    sha256: str
    loaded_at: float
    reloads: int
    refused: int
    last_reload_error: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    durability: str
    recovering: bool
    replayed_records: int
    log: LogStats | None  # None when nothing is written (durability = "memory")
    syncs: list[SyncSnapshot]
    disabled_syncs: list[str]
    profile_changes_refused: int
    # Why storage takes no writes now (ingest answers 503), or None.
    storage_fault: str | None = None
    # storage.journal_max_bytes: past it, ingest answers 429.
    journal_max_bytes: int = 0
    # The config file in force (None for a pipeline not started from a file).
    config: ConfigSnapshot | None = None
    # Items the journal held for syncs no longer configured, written as dead letters at
    # the last start: per sync name.
    unconfigured_dead_letters: dict[str, int] = field(default_factory=dict)
    # Cluster mode's section of /status (this node, the nodes, each partition's owner
    # and lag, what this node's consumers did); None in embedded mode.
    cluster: dict[str, Any] | None = None


def sync_snapshot(
    delivery: SyncDelivery, route: RouteStats, draining: bool = False
) -> SyncSnapshot:
    """What the operations views see of one sync's delivery, and its routing counters."""
    letters = delivery.settlement.dead_letters
    return SyncSnapshot(
        name=delivery.name,
        enabled=delivery.sync.enabled,
        api_key=delivery.sync.api_key,
        endpoint_base=delivery.sync.endpoint_base,
        route=route,
        delivery=delivery.stats,
        caps=delivery.caps,
        queued_items=delivery.lanes.items,
        queued_bytes=delivery.lanes.bytes,
        paused=delivery.pause.reason,
        max_queued_items=delivery.sync.delivery.max_queued_items,
        max_queued_bytes=delivery.sync.delivery.max_queued_bytes,
        draining=draining,
        dead_letter_bytes=letters.size(),
        dead_letter_max_bytes=letters.max_bytes,
        dead_letter_at_cap=letters.at_cap,
    )
