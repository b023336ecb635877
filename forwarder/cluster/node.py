"""A cluster node: what the daemon runs when the config has a [cluster] table.

Ingest publishes each request's events to JetStream (ClusterIngest); the node delivers
the partitions it owns (Ownership, OwnedPartitions) through the same intake, lanes,
batcher and sender as embedded mode, with profiles, insert_ids, dead letters and the
rate budget in Redis, shared by every node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis

from forwarder.cluster.ack_tracker import AckTracker
from forwarder.cluster.buckets import advert_now
from forwarder.cluster.clients import redis_client
from forwarder.cluster.dead_letters import cluster_dead_letters
from forwarder.cluster.errors import ClusterUnavailable
from forwarder.cluster.leases import Ownership
from forwarder.cluster.node_status import StatusWatch
from forwarder.cluster.owned import OwnedPartitions
from forwarder.cluster.profiles import RedisProfileStore
from forwarder.cluster.publish import ClusterIngest
from forwarder.cluster.rate import RedisRateBudget
from forwarder.cluster.replay_aside import restore_expired
from forwarder.cluster.seen import RedisSeenInserts
from forwarder.cluster.stream import connect, ensure_stream
from forwarder.cluster.wire import partition_of
from forwarder.config import ClusterConfig, Config
from forwarder.deliver.deliveries import Deliveries
from forwarder.deliver.sync import SyncDelivery
from forwarder.ingest.intake import Intake
from forwarder.ops.snapshot import Snapshot, sync_snapshot
from forwarder.reload import ConfigSource

log = logging.getLogger("forwarder.cluster")


class ClusterNode:
    """One node of a cluster: its ingest sink, its partitions, its deliveries."""

    def __init__(
        self,
        config: Config,
        cluster: ClusterConfig,
        nc: NATS,
        js: JetStreamContext,
        redis: Redis,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.nc, self.js, self.redis = nc, js, redis
        storage = config.storage
        partitions = cluster.partitions
        self.profiles = RedisProfileStore(
            redis,
            storage.profile_cache_size,
            partition_of=lambda user: partition_of(user, partitions),
        )
        self.seen = RedisSeenInserts(redis, storage.dedupe_window_seconds)
        enabled = [sync for sync in config.syncs if sync.enabled]
        self.rate = RedisRateBudget(redis, enabled)
        self.intake = Intake(enabled, self.profiles, storage.max_profile_bytes, self.seen)
        self.tracker = AckTracker(self.intake, self._begin)
        # Where every node writes a sync's dead letters, and the CLI reads them.
        self.dead_letters = [cluster_dead_letters(config, redis, sync.name) for sync in enabled]
        self.deliveries = [
            SyncDelivery(sync, self.rate, letters, acknowledge=self.tracker.acknowledge)
            for sync, letters in zip(enabled, self.dead_letters, strict=True)
        ]
        # No reload in cluster mode (see reload_on): the fleet never changes.
        self.fleet = Deliveries(self.deliveries)
        self.ingest = ClusterIngest(nc, js, cluster)
        self.partitions = OwnedPartitions(
            js, cluster, self.intake, self.deliveries, self.tracker, self.profiles, self.seen
        )
        self.ownership = Ownership(
            js,
            cluster,
            cluster.node,
            self.partitions.gained,
            self.partitions.lost,
            # What `forwarder cluster status` shows of each node: where to reach its admin.
            advert=advert_now(config.server.admin_listen),
        )
        self.status = StatusWatch(js, cluster, self.ownership)
        self.config_source: ConfigSource | None = None
        self.started_at = time.time()

    def _begin(self, seq: int) -> None:
        self.partitions.begin(seq)

    @classmethod
    async def open(cls, config: Config) -> ClusterNode:
        """Connect to NATS and Redis and check the stream: ClusterUnavailable when a server
        does not answer, StreamMismatch when the stream disagrees with the config."""
        cluster = config.cluster
        assert cluster is not None, "a [cluster] table"
        nc, js = await connect(cluster)
        try:
            await ensure_stream(js, cluster)
        except BaseException:
            await nc.close()
            raise
        return cls(config, cluster, nc, js, redis_client(cluster.redis_url))

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            # A replay that died left letters aside: back in their streams before the
            # sizes are read (Redis down now: the next `dead-letters` command does it).
            await restore_expired(self.config, self.redis)
        except ClusterUnavailable as error:
            log.warning("dead letters left aside by a stopped replay not checked: %s", error)
        for letters in self.dead_letters:
            # The letters every node wrote so far count against the cap from the start
            # (Redis down now: the first write reads the size instead).
            try:
                await letters.refresh()
            except ClusterUnavailable as error:
                log.warning("dead-letter size unknown at start: %s", error)
        await self.fleet.start()
        self.tracker.start()
        await self.ownership.start()
        self.status.start()
        log.info(
            "cluster node %s: %d partitions of stream %s, %d sync(s)",
            self.cluster.node,
            self.cluster.partitions,
            self.cluster.stream,
            len(self.deliveries),
            extra={"node": self.cluster.node},
        )

    async def drain(self, timeout: float) -> bool:
        """Stop fetching, send what is queued and acknowledge what settles, for up to
        `timeout` seconds; then give up every partition (its lease deleted, so the others
        take over at once). True when everything fetched was settled and acknowledged."""
        deadline = time.monotonic() + timeout
        await self.partitions.pause()
        flushed = await self.fleet.flush(timeout)
        acked = await self.tracker.settled(max(0.0, deadline - time.monotonic()))
        left = self.tracker.pending()
        await self.ownership.stop(release=True)
        if left:
            log.warning(
                "drain: %d message(s) not acknowledged; their partitions' next owners deliver them",
                left,
            )
        return flushed and acked and not left

    async def stop(self) -> int:
        """Stop delivery and close the connections; how many items were left queued."""
        await self.status.stop()
        if self.partitions.consumers:  # not drained: leave the leases to run out
            await self.ownership.stop(release=False)
        left = await self.fleet.stop()
        await self.tracker.stop()
        try:
            await self.profiles.close()
            await self.seen.close()
        except ClusterUnavailable as error:
            log.warning("closing the Redis stores: %s", error)
        await self.nc.close()
        await self.redis.aclose()
        return left

    async def reload_on(self, requested: asyncio.Event) -> None:
        """SIGHUP: refused in cluster mode (every node must route alike: restart them)."""
        while True:
            await requested.wait()
            requested.clear()
            log.error(
                "config reload refused: cluster mode takes a new config at a restart (restart "
                "the nodes one by one; a drained node's partitions move to the others)"
            )
            if self.config_source is not None:
                self.config_source.refuse("cluster mode: restart to change the config")

    # --- for operations ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            durability="cluster",
            recovering=False,
            replayed_records=0,
            log=None,
            syncs=[
                sync_snapshot(delivery, self.intake.route_stats(delivery.name))
                for delivery in self.deliveries
            ],
            disabled_syncs=[s.name for s in self.config.syncs if not s.enabled],
            profile_changes_refused=self.intake.totals.profile_changes_refused,
            config=self.config_source.snapshot() if self.config_source else None,
            cluster=self.cluster_section(),
        )

    def cluster_section(self) -> dict[str, Any]:
        """This node's part of /status: the shared view plus what its consumers did."""
        counts, acks, partitions = self.partitions.counts, self.tracker.counts, self.partitions
        return {
            **self.status.section(),
            "this_node": {
                "node": self.cluster.node,
                "owned_partitions": partitions.owned,
                "messages_processed": counts.messages,
                "events_processed": counts.events,
                "events_already_applied": counts.events_already_applied,
                "bad_messages": counts.bad_messages,
                "messages_unacknowledged": self.tracker.pending(),
                "messages_acknowledged": acks.acked,
                "messages_left_to_next_owner": acks.abandoned,
                "items_dropped_with_partitions": partitions.items_dropped,
                "partitions_gained": partitions.gains,
                "partitions_lost": partitions.losses,
                "ack_failures": acks.ack_failures,
                "profile_flush_failures": acks.flush_failures,
                "profiles_already_applied": self.profiles.counts.already_applied,
                "ingest": {
                    "requests": self.ingest.stats.requests,
                    "messages": self.ingest.stats.messages,
                    "events": self.ingest.stats.events,
                    "failures": dict(self.ingest.stats.failures),
                },
            },
        }
