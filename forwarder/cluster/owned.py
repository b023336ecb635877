"""The partitions this node owns: a consumer each, started and stopped as leases come and go."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nats.js import JetStreamContext

from forwarder.cluster.ack_tracker import AckTracker
from forwarder.cluster.consumer import ConsumerCounts, PartitionConsumer, doomed_by
from forwarder.cluster.profiles import RedisProfileStore
from forwarder.cluster.seen import RedisSeenInserts
from forwarder.config import ClusterConfig
from forwarder.deliver.sync import SyncDelivery
from forwarder.ingest.intake import Intake

log = logging.getLogger("forwarder.cluster")


class OwnedPartitions:
    """Ownership's callbacks: `gained` starts a partition's consumer, `lost` stops it
    and takes back everything of it this node holds (queued items, pending profile
    changes, cached profiles), so the next owner starts from what is stored."""

    def __init__(
        self,
        js: JetStreamContext,
        cluster: ClusterConfig,
        intake: Intake,
        deliveries: Sequence[SyncDelivery],
        tracker: AckTracker,
        profiles: RedisProfileStore,
        seen: RedisSeenInserts,
    ) -> None:
        self.js = js
        self.cluster = cluster
        self.intake = intake
        self.deliveries = deliveries
        self.tracker = tracker
        self.profiles = profiles
        self.seen = seen
        self.consumers: dict[int, PartitionConsumer] = {}
        self.counts = ConsumerCounts()
        # Items taken out of the lanes with their partition (its next owner sends them).
        self.items_dropped = 0
        self.gains = 0
        self.losses = 0
        # Off while draining: a partition won meanwhile is not fetched (it is released).
        self.fetching = True

    def begin(self, seq: int) -> None:
        """The profile changes and insert_ids that follow belong to stream message `seq`."""
        self.profiles.begin(seq)
        self.seen.begin(seq)

    async def gained(self, partition: int) -> None:
        self.gains += 1
        self.profiles.keep_only([*self.consumers, partition])
        consumer = PartitionConsumer(
            partition,
            self.js,
            self.cluster,
            self.intake,
            self.deliveries,
            self.tracker,
            self.profiles.applied,
            self.begin,
            self.counts,
        )
        self.consumers[partition] = consumer
        if self.fetching:
            consumer.start()
        log.info("partition %d taken", partition, extra={"partition": partition})

    async def lost(self, partition: int) -> None:
        self.losses += 1
        consumer = self.consumers.pop(partition, None)
        if consumer is not None:
            await consumer.stop()
        seqs = self.tracker.forget(partition)
        dropped = 0
        if seqs:
            doomed = doomed_by(seqs)
            dropped = sum(delivery.drop(doomed) for delivery in self.deliveries)
        self.items_dropped += dropped
        self.profiles.keep_only(list(self.consumers))
        log.info(
            "partition %d given up: %d message(s) left to its next owner, %d queued item(s) "
            "dropped",
            partition,
            len(seqs),
            dropped,
            extra={"partition": partition},
        )

    async def pause(self) -> None:
        """Stop fetching every partition (a drain): what was fetched goes on settling."""
        self.fetching = False
        for consumer in self.consumers.values():
            await consumer.stop()

    @property
    def owned(self) -> list[int]:
        return sorted(self.consumers)
