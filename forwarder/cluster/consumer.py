"""The owner's side of a partition: fetch its messages in order, route them, queue the items.

Taking a partition, the owner deletes and re-creates the partition's durable consumer
with deliver policy "all": the stream is a work queue, so it receives exactly the
messages no owner acknowledged yet, in stream order, at once. Losing it, the owner stops
fetching at once, takes the partition's queued items out of its lanes and forgets what
its messages changed: the next owner processes them again from the stored profiles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from forwarder.cluster.ack_tracker import AckTracker
from forwarder.cluster.errors import ClusterUnavailable
from forwarder.cluster.tasks import stop_task
from forwarder.cluster.wire import BadBatch, decode_batch, subject_of
from forwarder.config import ClusterConfig
from forwarder.deliver.lanes import Queued
from forwarder.deliver.notices import Notices
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import scrub
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake

log = logging.getLogger("forwarder.cluster")

# Messages asked for per fetch; how long a fetch of what is there may take; how long an
# idle partition's fetch waits for the next message.
FETCH_BATCH = 64
FETCH_NOW_SECONDS = 0.05
FETCH_WAIT_SECONDS = 1.0
# Seconds between tries when NATS or Redis fails a call, and between looks at the lanes
# while the deliveries have no room.
RETRY_SECONDS = 1.0
ROOM_POLL_SECONDS = 0.05
# The consumer's ack wait: longer than any delivery, since a message is acknowledged only
# once its items are settled; a new owner re-creates the consumer instead of waiting.
ACK_WAIT_SECONDS = 3600.0
NOTICE_SECONDS = 30.0


def consumer_name(partition: int) -> str:
    return f"p{partition}"


def salt_of(seq: int) -> bytes:
    """The id salt of a message's events without insert_id (each adds its index): the
    stream sequence, so every owner gives them the same Iterable ids."""
    return b"stream" + seq.to_bytes(8, "big")


@dataclass
class ConsumerCounts:
    messages: int = 0
    events: int = 0
    # Events skipped because their user's stored profile already includes the message
    # (it was committed, so its items went out, before a failover).
    events_already_applied: int = 0
    bad_messages: int = 0
    fetch_failures: int = 0


class PartitionConsumer:
    """Fetches one owned partition and hands each message's items to the deliveries."""

    def __init__(
        self,
        partition: int,
        js: JetStreamContext,
        cluster: ClusterConfig,
        intake: Intake,
        deliveries: Sequence[SyncDelivery],
        tracker: AckTracker,
        applied: Callable[[str], int],
        begin: Callable[[int], None],
        counts: ConsumerCounts,
    ) -> None:
        self.partition = partition
        self.js = js
        self.cluster = cluster
        self.intake = intake
        self.deliveries = deliveries
        self.tracker = tracker
        self._applied = applied
        self._begin = begin
        self.counts = counts
        self._task: asyncio.Task[None] | None = None
        self._notices = Notices(NOTICE_SECONDS)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"partition-{self.partition}")

    async def stop(self) -> None:
        """Stop fetching now (a message half processed is dropped with the partition)."""
        task, self._task = self._task, None
        await stop_task(task)

    # --- fetching --------------------------------------------------------------------

    async def _run(self) -> None:
        subscription = await self._subscribe()
        try:
            while True:
                await self._room()
                try:
                    messages = await _fetch(subscription)
                except TimeoutError:  # nats' own and asyncio's: nothing new within the wait
                    continue
                except (nats.errors.Error, OSError) as error:
                    self.counts.fetch_failures += 1
                    self._tell("fetch", "fetching partition %d failed, retrying: %s", error)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                for message in messages:
                    await self._handle(message)
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:  # a closed connection: nothing to unsubscribe from
                log.debug("unsubscribing partition %d", self.partition, exc_info=True)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        """A fresh durable consumer for the partition, retried until NATS takes it."""
        name, stream = consumer_name(self.partition), self.cluster.stream
        config = js_api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=subject_of(self.cluster.subject_prefix, self.partition),
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS,
            max_ack_pending=self.cluster.max_ack_pending,
            num_replicas=self.cluster.replicas,
        )
        while True:
            try:
                try:
                    await self.js.delete_consumer(stream, name)
                except NotFoundError:
                    pass
                await self.js.add_consumer(stream, config)
                return await self.js.pull_subscribe_bind(durable=name, stream=stream)
            except (nats.errors.Error, OSError, TimeoutError) as error:
                self.counts.fetch_failures += 1
                self._tell("subscribe", "taking partition %d's consumer failed: %s", error)
                await asyncio.sleep(RETRY_SECONDS)

    async def _room(self) -> None:
        """Wait while a delivery has no room: the stream keeps what waits."""
        while not all(delivery.has_room() for delivery in self.deliveries):
            await asyncio.sleep(ROOM_POLL_SECONDS)

    # --- one message -----------------------------------------------------------------

    async def _handle(self, message: Msg) -> None:
        seq = message.metadata.sequence.stream
        self.counts.messages += 1
        try:
            batch = decode_batch(message.data)
        except BadBatch as error:
            # Not ours to deliver (nothing forwarder wrote): said, and taken off the stream.
            self.counts.bad_messages += 1
            log.error("partition %d message %d unreadable, dropped: %s", self.partition, seq, error)
            self.tracker.queued(self.tracker.track(self.partition, seq, message, None))
            return
        await self._load(batch.events)
        events = [e for e in batch.events if self._applied(e.amplitude_user) < seq]
        self.counts.events += len(events)
        self.counts.events_already_applied += len(batch.events) - len(events)
        self._begin(seq)
        intaken = self.intake.process(events, batch.received_at, salt=salt_of(seq))
        entry = self.tracker.track(self.partition, seq, message, intaken)
        deliveries = self.deliveries
        for index, endpoint, item, data in intaken.routed:
            deliveries[index].enqueue(endpoint, item, data, seq)
        self.tracker.queued(entry)

    async def _load(self, events: list[Event]) -> None:
        """The events' profiles and insert_ids, retried while Redis does not answer."""
        while True:
            try:
                await self.intake.load(events)
                return
            except ClusterUnavailable as error:
                self._tell("load", "reading profiles for partition %d failed, retrying: %s", error)
            await asyncio.sleep(RETRY_SECONDS)

    def _tell(self, cause: str, text: str, error: BaseException) -> None:
        held = self._notices.due(cause, time.monotonic())
        if held is not None:
            more = f" ({held} more like it held back)" if held else ""
            said = scrub(f"{type(error).__name__}: {error}")
            log.warning(text + more, self.partition, said, extra={"partition": self.partition})


async def _fetch(subscription: JetStreamContext.PullSubscription) -> list[Msg]:
    """The messages there now (up to a batch), else the next one to come (TimeoutError
    when none comes within the wait). A lingering fetch of a whole batch would return
    only once the batch is full or the wait is over: a quiet partition's messages would
    wait that long."""
    try:
        return await subscription.fetch(FETCH_BATCH, timeout=FETCH_NOW_SECONDS)
    except TimeoutError:
        return await subscription.fetch(1, timeout=FETCH_WAIT_SECONDS)


def doomed_by(seqs: set[int]) -> Callable[[Queued], bool]:
    """The queued items of these messages (a lost partition's)."""
    return lambda queued: queued.seq in seqs
