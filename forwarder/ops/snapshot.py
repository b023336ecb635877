"""What the operations views read: a snapshot of the pipeline, never its private parts."""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.deliver.stats import DeliveryStats
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

    @property
    def state(self) -> str:
        if self.paused is not None:
            return "paused"
        if self.queued_items or self.delivery.in_flight:
            return "sending"
        return "idle"


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
