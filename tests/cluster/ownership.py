"""Ownership nodes on a real NATS for the lease tests, and the record of what they did."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client

from forwarder.cluster.leases import Ownership
from forwarder.cluster.stream import connect
from forwarder.config import ClusterConfig
from tests.processes import free_port

PARTITIONS = 64
Callback = Callable[[int], Awaitable[None]]


def cluster_config(url: str, lease_seconds: float) -> ClusterConfig:
    return ClusterConfig(nats_url=url, node="unused", lease_seconds=lease_seconds)


class Cutter:
    """A TCP proxy to NATS for one node: cut() drops its connections and refuses new
    ones (the node is cut off while NATS and the other nodes carry on); mend() undoes it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._links.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            for other in list(self._links):
                if other.transport.is_closing():
                    self._links.discard(other)


@dataclass
class Change:
    at: float
    node: str
    gained: bool
    partition: int


@dataclass
class Record:
    """Every on_gained / on_lost of every node, in the order they ran, and any moment
    the nodes' own views (owns) put one partition on two nodes."""

    changes: list[Change] = field(default_factory=list)
    overlaps: list[tuple[float, int, list[str]]] = field(default_factory=list)

    def callbacks(self, node: str) -> tuple[Callback, Callback]:
        async def gained(partition: int) -> None:
            self.changes.append(Change(time.monotonic(), node, True, partition))

        async def lost(partition: int) -> None:
            self.changes.append(Change(time.monotonic(), node, False, partition))

        return gained, lost

    def double_gains(self) -> list[Change]:
        """Gains of a partition while another node had not yet given it up."""
        holder: dict[int, str] = {}
        bad = []
        for change in self.changes:
            if change.gained:
                if change.partition in holder:
                    bad.append(change)
                holder[change.partition] = change.node
            elif holder.get(change.partition) == change.node:
                del holder[change.partition]
        return bad

    def gains_after(self, since: float, node: str | None = None) -> list[Change]:
        return [c for c in self.changes if c.gained and c.at >= since and node in (None, c.node)]


@dataclass
class Node:
    name: str
    client: Client
    ownership: Ownership


class Nodes:
    """Ownership instances, one NATS connection each, all recorded in one Record."""

    def __init__(self, url: str, lease_seconds: float) -> None:
        self.url = url
        self.config = cluster_config(url, lease_seconds)
        self.record = Record()
        self.nodes: dict[str, Node] = {}
        self._watch: asyncio.Task[None] | None = None

    async def add(self, name: str, url: str | None = None) -> Node:
        """A node on its own connection (to `url`, else NATS itself), as the daemon makes."""
        config = msgspec.structs.replace(self.config, nats_url=url or self.url, node=name)
        client, js = await connect(config)
        gained, lost = self.record.callbacks(name)
        ownership = Ownership(js, self.config, name, gained, lost)
        await ownership.start()
        node = self.nodes[name] = Node(name, client, ownership)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_overlaps())
        return node

    async def kill(self, name: str) -> None:
        """As kill -9 looks from outside: the connection drops and nothing is released."""
        node = self.nodes.pop(name)
        await node.client.close()
        await node.ownership.stop(release=False)

    async def stop(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.ownership.stop(release=True)
        await node.client.close()

    def owned(self) -> dict[str, frozenset[int]]:
        return {name: node.ownership.owned() for name, node in self.nodes.items()}

    def split(self) -> list[int]:
        """How many partitions each node owns, if together they own each exactly once."""
        owned = self.owned()
        everything = [p for partitions in owned.values() for p in partitions]
        if sorted(everything) != list(range(PARTITIONS)):
            return []
        return sorted(len(partitions) for partitions in owned.values())

    async def until(self, done: Callable[[], bool], seconds: float) -> float:
        """Seconds until `done()`; an AssertionError past `seconds`."""
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if done():
                return time.monotonic() - start
            await asyncio.sleep(0.02)
        raise AssertionError(f"not done in {seconds} s: {self.owned_counts()}")

    def owned_counts(self) -> dict[str, int]:
        return {name: len(partitions) for name, partitions in self.owned().items()}

    async def _watch_overlaps(self) -> None:
        while True:
            owners: dict[int, list[str]] = {}
            for name, partitions in self.owned().items():
                for partition in partitions:
                    owners.setdefault(partition, []).append(name)
            for partition, names in owners.items():
                if len(names) > 1:
                    self.record.overlaps.append((time.monotonic(), partition, names))
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for name in list(self.nodes):
            node = self.nodes.pop(name)
            await node.ownership.stop(release=False)
            await node.client.close()
