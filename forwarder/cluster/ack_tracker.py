"""When a stream message may be acknowledged: its items settled, its profile changes stored.

A partition's messages are committed in stream order, each once its own items and those
of every message before it are settled (delivered or dead-lettered): only then do its
profile changes go to the store, which writes them with the message's sequence. So a
user's stored profile is always the state after a message whose items all went out, and
a message delivered again (after a failover) is processed from exactly the state before
it: the same items, the same ids, each `$add` applied once. A message is acknowledged to
JetStream once the profile flush that followed its commit succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from forwarder.cluster.errors import ClusterUnavailable
from forwarder.cluster.tasks import stop_task
from forwarder.deliver.notices import Notices
from forwarder.errors import scrub
from forwarder.ingest.intake import Intake, Intaken

log = logging.getLogger("forwarder.cluster")

# Seconds between tries of a profile flush or an acknowledgement that failed.
RETRY_SECONDS = 1.0
# Seconds an acknowledgement may take before it is tried again.
ACK_TIMEOUT_SECONDS = 5.0
# At most one line per cause per this many seconds.
NOTICE_SECONDS = 30.0


class Acknowledgeable(Protocol):
    """A JetStream message, as far as acknowledging it goes (nats.aio.msg.Msg)."""

    async def ack_sync(self, timeout: float = 1.0) -> Any: ...


@dataclass(eq=False, slots=True)
class InFlight:
    """One stream message between its fetch and its acknowledgement."""

    partition: int
    seq: int
    message: Acknowledgeable
    intaken: Intaken | None
    # Items of the message not yet settled.
    waiting: int
    # The intake's "durable" future: resolved at commit, cancelled if the partition goes.
    committed: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class AckCounts:
    """What the tracker did, for /metrics and /status."""

    tracked: int = 0
    acked: int = 0
    # Messages dropped unacknowledged because their partition went to another node.
    abandoned: int = 0
    ack_failures: int = 0
    flush_failures: int = 0
    last_ack_at: float | None = None


class AckTracker:
    """Counts each message's items as the deliveries settle them (`acknowledge`, their
    callback), commits messages in order per partition, flushes, then acknowledges.

    `begin(seq)` tells the profile and dedupe stores which message the next writes
    belong to.
    """

    def __init__(self, intake: Intake, begin: Callable[[int], None]) -> None:
        self.intake = intake
        self._begin = begin
        self.counts = AckCounts()
        self._by_seq: dict[int, InFlight] = {}
        self._queues: dict[int, deque[InFlight]] = {}
        # Committed, waiting for the next flush, then their acknowledgement.
        self._committed: list[InFlight] = []
        self._acking: set[InFlight] = set()
        self._wake = asyncio.Event()
        self._notices = Notices(NOTICE_SECONDS)
        self._task: asyncio.Task[None] | None = None

    # --- counting ------------------------------------------------------------------

    def track(
        self, partition: int, seq: int, message: Acknowledgeable, intaken: Intaken | None
    ) -> InFlight:
        """A message processed into `intaken` (None: nothing to process), before its items
        are queued (they may settle at once: an item too large); `queued` follows."""
        items = len(intaken.routed) if intaken is not None else 0
        entry = InFlight(partition, seq, message, intaken, items)
        self._by_seq[seq] = entry
        self._queues.setdefault(partition, deque()).append(entry)
        self.counts.tracked += 1
        if intaken is not None and (intaken.touched or intaken.seen):
            # Later messages of the same users see these changes before they are stored.
            self.intake.stage(intaken, entry.committed)
        return entry

    def queued(self, entry: InFlight) -> None:
        """The message's items are all queued: with none left waiting, it commits."""
        if entry.waiting <= 0:
            self._advance(entry.partition)

    def acknowledge(self, seq: int, count: int) -> None:
        """The deliveries' callback: `count` items of message `seq` are settled. Items of
        a message no longer tracked (its partition went elsewhere) are ignored."""
        entry = self._by_seq.get(seq)
        if entry is None:
            return
        entry.waiting -= count
        if entry.waiting <= 0:
            self._advance(entry.partition)

    def _advance(self, partition: int) -> None:
        queue = self._queues.get(partition)
        committed = False
        while queue and queue[0].waiting <= 0:
            entry = queue.popleft()
            del self._by_seq[entry.seq]
            self._commit(entry)
            committed = True
        if committed:
            self._wake.set()

    def _commit(self, entry: InFlight) -> None:
        self._begin(entry.seq)
        entry.committed.set_result(entry.seq)
        if entry.intaken is not None:
            self.intake.commit(entry.intaken, entry.committed)
        self._committed.append(entry)

    # --- a partition that went to another node -------------------------------------

    def forget(self, partition: int) -> set[int]:
        """Drop the partition's messages unacknowledged (their next owner gets them
        again); the sequences of those whose items may still be queued."""
        queue = self._queues.pop(partition, deque())
        for entry in queue:
            del self._by_seq[entry.seq]
            entry.committed.cancel()
        # Their profile changes were never stored: forget what later messages saw of them.
        self.intake.forget_failed()
        kept = [entry for entry in self._committed if entry.partition != partition]
        acking = [entry for entry in self._acking if entry.partition == partition]
        self._acking.difference_update(acking)
        self.counts.abandoned += len(queue) + len(self._committed) - len(kept) + len(acking)
        self._committed = kept
        return {entry.seq for entry in queue}

    def pending(self) -> int:
        """Messages fetched and not yet acknowledged."""
        return len(self._by_seq) + len(self._committed) + len(self._acking)

    async def settled(self, timeout: float) -> bool:
        """Wait until every message committed so far is acknowledged (a drain)."""
        deadline = time.monotonic() + timeout
        while self._committed or self._acking:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # --- flushing and acknowledging ------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-acks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._committed = self._committed, []
            if not batch:
                continue
            self._acking.update(batch)
            try:
                await self._flush()
                # A partition lost during the flush: its next owner acknowledges them.
                owned = [entry for entry in batch if entry in self._acking]
                await asyncio.gather(*(self._ack(entry) for entry in owned))
            finally:
                self._acking.difference_update(batch)

    async def _flush(self) -> None:
        """Store every profile change and insert_id committed so far, retrying until the
        stores take them (nothing is acknowledged before)."""
        while True:
            try:
                await self.intake.profiles.flush()
                await self.intake.seen.flush()
                return
            except ClusterUnavailable as error:
                self.counts.flush_failures += 1
                self._tell("flush", "profile flush failed, retrying: %s", error)
            await asyncio.sleep(RETRY_SECONDS)

    async def _ack(self, entry: InFlight) -> None:
        while entry in self._acking:
            try:
                await entry.message.ack_sync(timeout=ACK_TIMEOUT_SECONDS)
            except Exception as error:  # nats' errors (timeout, closed, no responders)
                self.counts.ack_failures += 1
                self._tell("ack", "acknowledging message %s failed, retrying: %s", error, entry.seq)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.counts.acked += 1
            self.counts.last_ack_at = time.time()
            return

    def _tell(self, cause: str, text: str, error: BaseException, *args: object) -> None:
        held = self._notices.due(cause, time.monotonic())
        if held is not None:
            more = f" ({held} more like it held back)" if held else ""
            log.warning(text + more, *args, scrub(f"{type(error).__name__}: {error}"))
