"""Partition ownership: one node at a time per partition, by leases in a NATS KV bucket.

Each partition has a key `p.<n>` in the bucket `<stream>_leases`, whose entries JetStream
drops `lease_seconds` after they were last written (the bucket's max age). A node takes
a partition by creating its key (compare-and-set on "absent") and keeps it by updating
the key with the revision it last wrote; a node that stops renewing loses it to the
server's clock. Before that can happen the holder fences itself on its own clock: a
lease not renewed within `lease_seconds - margin` of the renewal's sending is given up
(on_lost) at once, so the old owner has stopped before a new one can create the key.
Nodes announce themselves in `<stream>_nodes` (same TTL); each takes its fair share of
the partitions among the live nodes and gives up the rest, so a joining node gets work
and a dead node's partitions go to the others once its keys expire.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from forwarder.cluster.buckets import (
    NATS_TROUBLE,
    Lease,
    NodeAdvert,
    advert_now,
    lease_key,
    read_leases,
    read_nodes,
)
from forwarder.cluster.share import plan, quota
from forwarder.cluster.stream import ensure_buckets, lease_bucket, node_bucket
from forwarder.cluster.tasks import stop_task
from forwarder.config import ClusterConfig

log = logging.getLogger("forwarder.cluster")

Callback = Callable[[int], Awaitable[None]]
_T = TypeVar("_T")


class Held(msgspec.Struct):
    """A lease this node holds: the revision to renew against and, on the monotonic
    clock, when it stops trusting the lease unless a renewal is confirmed first."""

    revision: int
    deadline: float


class Ownership:
    """Takes, keeps and gives up partition leases for one node.

    on_gained(p) is awaited once a lease is won, on_lost(p) once it is given up (fenced,
    taken over, released or stopped); both run one at a time, in the order they happen,
    and for one partition always alternate gained, lost, gained...
    """

    def __init__(
        self,
        js: JetStreamContext,
        config: ClusterConfig,
        node: str,
        on_gained: Callback,
        on_lost: Callback,
        *,
        advert: NodeAdvert | None = None,
    ) -> None:
        self._js = js
        self._config = config
        self._node = node
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._advert = advert or advert_now()
        self._lease_seconds = config.lease_seconds
        # Renewals are due a third of the way through a lease, and the fence falls a
        # third before its end: a missed renewal is tried twice more before the fence.
        self.renew_every = config.lease_seconds / 3
        self.margin = config.lease_seconds / 3
        self.step = config.lease_seconds / 6
        # No call to NATS waits past a step, so a silent server can't stall a round.
        self._op_timeout = self.step
        self._held: dict[int, Held] = {}
        self._holders: dict[int, str] = {}
        self._nodes: dict[str, NodeAdvert] = {}
        self._callbacks = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: KeyValue | None = None
        self._registry: KeyValue | None = None
        self._last_beat = -math.inf
        self._last_read = -math.inf

    @property
    def node(self) -> str:
        return self._node

    def owns(self, partition: int) -> bool:
        """Whether this node may deliver `partition` now: it holds the lease and its fence
        has not fallen (checked against the clock, so exact between two fence rounds)."""
        held = self._held.get(partition)
        return held is not None and time.monotonic() < held.deadline

    def owned(self) -> frozenset[int]:
        now = time.monotonic()
        return frozenset(p for p, held in self._held.items() if now < held.deadline)

    def owners(self) -> dict[int, str]:
        """Each leased partition's holder as last read, at most a few seconds ago (this
        node's own: as of now)."""
        view = {p: owner for p, owner in self._holders.items() if owner != self._node}
        view.update({p: self._node for p in self.owned()})
        return dict(sorted(view.items()))

    def nodes(self) -> dict[str, NodeAdvert]:
        """The live nodes as last read from the nodes bucket."""
        return dict(self._nodes)

    async def start(self) -> None:
        """Open (or create) the buckets, then take a share in the background.
        ClusterUnavailable if NATS doesn't answer, StreamMismatch if a bucket's TTL isn't
        `lease_seconds`."""
        self._leases, self._registry = await ensure_buckets(self._js, self._config)
        # Three loops, so a slow on_gained or lease read never delays a renewal or a fence.
        self._tasks = [
            asyncio.create_task(self._every_step(self._keep, "renewal"), name="lease-renewal"),
            asyncio.create_task(self._every_step(self._round, "share"), name="lease-share"),
            asyncio.create_task(self._fence(), name="lease-fence"),
        ]

    async def stop(self, release: bool = True) -> None:
        """Stop taking and renewing; every held partition is given up (on_lost). With
        `release` its lease is deleted too, and the node leaves the registry, so other
        nodes take over at their next round instead of after the lease runs out."""
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*(stop_task(task) for task in tasks))
        held = dict(self._held)
        for partition in sorted(held):
            await self._lose(partition)
        leases, registry = self._leases, self._registry
        if not release or leases is None or registry is None:  # never started: nothing held
            return
        deletes = [leases.delete(lease_key(p), last=h.revision) for p, h in held.items()]
        deletes.append(registry.delete(self._node))
        for result in await asyncio.gather(*map(self._bounded, deletes), return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, NATS_TROUBLE):
                raise result

    async def _bounded(self, call: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wait_for(call, self._op_timeout)

    async def _every_step(self, work: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await work()
            except NATS_TROUBLE as error:
                # The fence covers what can't be renewed; the next step tries again.
                log.debug("lease %s of %s: %s: %s", what, self._node, type(error).__name__, error)
            except Exception:  # a bug must not stop renewals quietly: said, and retried
                log.exception("lease %s of %s failed", what, self._node)
            await asyncio.sleep(self.step)

    async def _keep(self) -> None:
        """Heartbeat and renew what is due."""
        try:
            await self._beat()
        except NATS_TROUBLE as error:
            log.debug("heartbeat of %s: %s: %s", self._node, type(error).__name__, error)
        await self._renew()

    async def _round(self) -> None:
        """Read the live nodes; give up partitions past this node's share or take free
        ones up to it."""
        registry, leases = self._registry, self._leases
        assert registry is not None and leases is not None
        self._nodes = await self._bounded(read_nodes(self._js, registry, node_bucket(self._config)))
        share = quota(self._node, self._nodes, self._config.partitions)
        if len(self._held) > share:
            for partition in plan(
                self._node, share, self._held, {}, self._config.partitions
            ).release:
                await self._release(partition)
            return
        short = len(self._held) < share
        # At its share a node reads the others' leases only now and then, for owners().
        if not short and time.monotonic() - self._last_read < self.renew_every:
            return
        self._last_read = time.monotonic()
        found = await self._bounded(read_leases(self._js, leases, lease_bucket(self._config)))
        self._holders = {p: lease.owner for p, lease in found.items()}
        if short:
            wanted = plan(self._node, share, self._held, self._holders, self._config.partitions)
            await self._take(wanted.take, found)

    async def _beat(self) -> None:
        if time.monotonic() - self._last_beat < self.renew_every:
            return
        assert self._registry is not None
        sent = time.monotonic()
        await self._bounded(self._registry.put(self._node, msgspec.json.encode(self._advert)))
        self._last_beat = sent

    async def _renew(self) -> None:
        """Renew every lease whose fence is within a renewal interval (sooner after a
        failure: its fence stays where the last confirmed renewal put it)."""
        now = time.monotonic()
        due = {
            p: held
            for p, held in self._held.items()
            if held.deadline - now <= self._lease_seconds - self.margin - self.renew_every
        }
        results = await asyncio.gather(
            *(self._renew_one(p, held) for p, held in due.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, NATS_TROUBLE):
                raise result

    async def _renew_one(self, partition: int, held: Held) -> None:
        assert self._leases is not None
        sent = time.monotonic()
        key = lease_key(partition)
        try:
            revision = await self._bounded(
                self._leases.update(key, self._node.encode(), last=held.revision)
            )
        except KeyWrongLastSequenceError:
            # Someone wrote since: another node after it expired, or our own renewal
            # whose answer was lost. Only the first means the lease is gone.
            try:
                entry = await self._bounded(self._leases.get(key))
            except KeyNotFoundError:
                entry = None  # expired or deleted: gone as well
            if entry is not None and entry.value == self._node.encode():
                held.revision = entry.revision or held.revision
            elif self._held.get(partition) is held:
                await self._lose(partition)
            return
        held.revision = revision  # so a release deletes the lease's latest revision
        # A renewal sent after the fence fell doesn't revive the lease: it is given up.
        if self._held.get(partition) is held and sent < held.deadline:
            held.deadline = sent + self._lease_seconds - self.margin

    async def _take(self, partitions: list[int], found: dict[int, Lease]) -> None:
        assert self._leases is not None
        leases = self._leases

        async def one(partition: int) -> Held | None:
            sent = time.monotonic()
            key, value = lease_key(partition), self._node.encode()
            mine = found.get(partition)
            try:
                if mine is not None:  # leased to this node's name: ours to renew
                    revision = await self._bounded(leases.update(key, value, last=mine.revision))
                else:
                    revision = await self._bounded(leases.create(key, value))
            except KeyWrongLastSequenceError:
                return None  # another node was quicker
            return Held(revision=revision, deadline=sent + self._lease_seconds - self.margin)

        results = await asyncio.gather(*map(one, partitions), return_exceptions=True)
        for partition, result in zip(partitions, results, strict=True):
            if isinstance(result, Held):
                await self._gain(partition, result)
            elif isinstance(result, BaseException) and not isinstance(result, NATS_TROUBLE):
                raise result

    async def _gain(self, partition: int, held: Held) -> None:
        async with self._callbacks:
            if time.monotonic() >= held.deadline:
                return  # won too late to trust: the fence already fell
            self._held[partition] = held
            self._holders[partition] = self._node
            log.info("node %s owns partition %d", self._node, partition)
            try:
                await self._on_gained(partition)
                return
            except Exception:
                log.exception("taking partition %d failed: giving it up", partition)
        await self._release(partition)

    async def _lose(self, partition: int) -> None:
        async with self._callbacks:
            if self._held.pop(partition, None) is None:
                return
            self._holders.pop(partition, None)
            log.info("node %s gives up partition %d", self._node, partition)
            try:
                await self._on_lost(partition)
            except Exception:  # lost all the same: the lease is not renewed any more
                log.exception("giving up partition %d failed", partition)

    async def _release(self, partition: int) -> None:
        """Give up a partition this node holds past its share: stop first, then delete the
        lease (only if still ours) so another node can take it at once."""
        held = self._held.get(partition)
        if held is None:
            return
        await self._lose(partition)
        assert self._leases is not None
        await self._bounded(self._leases.delete(lease_key(partition), last=held.revision))

    async def _fence(self) -> None:
        """Give up each lease whose fence has fallen, as soon as it falls (_lose never
        raises but for a cancel, so this loop lasts as long as the node)."""
        while True:
            now = time.monotonic()
            for partition, held in list(self._held.items()):
                if held.deadline <= now:
                    log.warning(
                        "node %s fences partition %d: lease not renewed in time",
                        self._node,
                        partition,
                    )
                    await self._lose(partition)
            soonest = min((held.deadline for held in self._held.values()), default=math.inf)
            await asyncio.sleep(min(self.step, max(0.0, soonest - time.monotonic())) + 0.001)
