"""N `forwarder run` processes in cluster mode against one NATS, one Redis and one
in-process simulator, and a client that spreads requests over their ingest ports."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import AMPLITUDE_KEY, iterable_id, upload_body
from tests.processes import DaemonProcess, free_port

STREAM = "FORWARDER"
IDENTIFY = "$identify"
# Seconds a node gets to come up: connect, ensure the stream, serve /readyz.
START_SECONDS = 30.0
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass
class Limits:
    """The sync's Iterable limits and pacing, the same on every node."""

    track_bulk_per_second: float = 50
    bulk_update_per_second: float = 50
    max_events_per_request: int = 100
    max_users_per_request: int = 100
    linger_ms: int = 20
    event_properties: tuple[str, ...] = ("n", "seq")
    user_properties: tuple[str, ...] = ("plan", "logins")


def node_config(
    *,
    name: str,
    port: int,
    admin_port: int,
    storage: Path,
    nats_url: str,
    redis_url: str,
    sim_url: str,
    partitions: int,
    lease_seconds: float,
    limits: Limits,
) -> str:
    """One node's config.toml: its own ports, storage and name; the cluster's servers."""
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
api_keys = ["{AMPLITUDE_KEY}"]
drain_timeout_seconds = 5

[storage]
path = "{storage}"

[cluster]
nats_url = "{nats_url}"
redis_url = "{redis_url}"
node = "{name}"
partitions = {partitions}
stream = "{STREAM}"
lease_seconds = {lease_seconds}

[[syncs]]
name = "test"
api_key = "${{ITERABLE_KEY}}"
base_url = "{sim_url}"

[syncs.events]
event_properties = {json.dumps(list(limits.event_properties))}

[syncs.users]
user_properties = {json.dumps(list(limits.user_properties))}

[syncs.limits]
track_bulk_per_second = {limits.track_bulk_per_second}
bulk_update_per_second = {limits.bulk_update_per_second}
max_events_per_request = {limits.max_events_per_request}
max_users_per_request = {limits.max_users_per_request}

[syncs.delivery]
linger_ms = {limits.linger_ms}
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
outage_probe_seconds = 0.2
outage_probe_max_seconds = 1.0
"""


class Node:
    """One `forwarder run` in cluster mode; it keeps its ports, storage and name across
    restarts, as a host would."""

    def __init__(self, name: str, directory: Path, config_text: str, port: int) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "config.toml"
        self.config.write_text(config_text)
        self.process: DaemonProcess | None = None
        self.logs: list[Path] = []

    @property
    def admin_url(self) -> str:
        assert self.process is not None, f"{self.name} never started"
        return self.process.admin_url

    @property
    def alive(self) -> bool:
        return (
            self.process is not None
            and self.process.process is not None
            and self.process.process.returncode is None
        )

    async def start(self) -> None:
        assert not self.alive, f"{self.name} is running"
        self.process = DaemonProcess(self.config, self.port)
        self.logs.append(self.process.log)
        await asyncio.wait_for(self.process.start(), START_SECONDS)

    async def kill(self) -> None:
        """kill -9: no drain, no lease released, nothing acknowledged on the way out."""
        assert self.process is not None and self.process.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        assert await self.process.wait(10) == -signal.SIGKILL

    async def stop(self) -> None:
        """SIGTERM (a drain), kill -9 past 15 s; nothing if it is not running."""
        if self.alive:
            assert self.process is not None
            await self.process.stop()

    def output(self) -> str:
        """Every run's log, oldest first, for a failing test's message."""
        return "\n".join(
            f"--- {self.name} {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in self.logs
            if log.exists()
        )


class Cluster:
    """`count` nodes named node-1.. with their own ports and storage under `tmp_path`."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        nats_url: str,
        redis_url: str,
        sim_url: str,
        count: int = 3,
        partitions: int = 64,
        lease_seconds: float = 6.0,
        limits: Limits | None = None,
    ) -> None:
        self.partitions = partitions
        self.nodes: list[Node] = []
        for index in range(1, count + 1):
            name = f"node-{index}"
            port = free_port()
            text = node_config(
                name=name,
                port=port,
                admin_port=free_port(),
                storage=tmp_path / name / "var",
                nats_url=nats_url,
                redis_url=redis_url,
                sim_url=sim_url,
                partitions=partitions,
                lease_seconds=lease_seconds,
                limits=limits or Limits(),
            )
            self.nodes.append(Node(name, tmp_path / name, text, port))

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    @property
    def alive(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    async def start(self) -> Cluster:
        # One after another: the first creates the stream and buckets, the others find them.
        for node in self.nodes:
            await node.start()
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def output(self) -> str:
        return "\n".join(node.output() for node in self.nodes)

    async def owners(self, session: aiohttp.ClientSession, node: Node) -> dict[int, str | None]:
        """Each partition's owner as `node`'s /status cluster section shows it."""
        async with session.get(node.admin_url + "/status", timeout=STATUS_TIMEOUT) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        return partition_owners(body, self.partitions)

    async def wait_owned(
        self,
        session: aiohttp.ClientSession,
        by: Iterable[Node],
        timeout: float,
        spread: bool = False,
        every: float = 0.1,
    ) -> float:
        """Seconds until every partition is owned by one of `by` (with `spread`, each of
        `by` owning some), as each live node's /status says; an AssertionError naming the
        last owners past `timeout`."""
        names = {node.name for node in by}
        started = time.monotonic()
        last: dict[int, str | None] = {}
        while time.monotonic() - started < timeout:
            views = []
            for node in self.alive:
                try:
                    views.append(await self.owners(session, node))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    views.append({})
            if views and all(
                len(view) == self.partitions
                and (set(view.values()) == names if spread else set(view.values()) <= names)
                for view in views
            ):
                return time.monotonic() - started
            last = views[0] if views else {}
            await asyncio.sleep(every)
        counts = Counter(last.values())
        raise AssertionError(
            f"partitions not owned by {sorted(names)} in {timeout} s: {len(last)} owned, "
            f"by {dict(counts)}"
        )


def partition_owners(status: dict[str, Any], partitions: int) -> dict[int, str | None]:
    """partition -> owner (None: no one) from a /status body's `cluster` section.

    The section lists `partitions` as objects with `partition` and `owner` (and `lag`);
    a mapping from the partition's number to its owner (or an object with one) is taken
    too.
    """
    cluster = status.get("cluster")
    assert isinstance(cluster, dict), f"/status has no cluster section: {sorted(status)}"
    listed = cluster.get("partitions")
    assert listed is not None, f"/status cluster section lists no partitions: {sorted(cluster)}"
    owners: dict[int, str | None] = {}
    if isinstance(listed, dict):
        for key, value in listed.items():
            owners[int(key)] = value.get("owner") if isinstance(value, dict) else value
    else:
        for entry in listed:
            owners[int(entry["partition"])] = entry.get("owner")
    assert set(owners) <= set(range(partitions)), f"unknown partitions in {owners}"
    return {p: owner for p, owner in owners.items() if owner is not None}


@dataclass
class Spreader:
    """A client with no load balancer: requests go round-robin over the live nodes' ingest
    ports (or to the node asked for); it keeps every answer and the ids of the events
    answered 200."""

    session: aiohttp.ClientSession
    cluster: Cluster
    acknowledged: set[str] = field(default_factory=set)
    # Events (not identifies: they send no event) answered 200, in the order their
    # answers came.
    acknowledged_events: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    # Requests whose answer never came (a node killed with it in flight): their events
    # may or may not have been taken.
    unanswered: int = 0
    _turn: int = 0

    def next_node(self, among: list[Node] | None = None) -> Node:
        nodes = [node for node in (among or self.cluster.nodes) if node.alive]
        assert nodes, "no node is alive"
        self._turn += 1
        return nodes[self._turn % len(nodes)]

    async def post(
        self, events: list[dict[str, Any]], node: Node | None = None, timeout: float = 15.0
    ) -> int | None:
        """POST /2/httpapi to `node` (else the next live one): the status, or None when
        the connection failed or no answer came within `timeout`."""
        target = node or self.next_node()
        try:
            async with self.session.post(
                target.url + "/2/httpapi",
                data=upload_body(events),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.unanswered += 1
            return None
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            tracked = [event for event in events if event["event_type"] != IDENTIFY]
            self.acknowledged.update(iterable_id(event) for event in tracked)
            self.acknowledged_events.extend(tracked)
        return status


def most_in_a_window(times: list[float], window: float = 1.0) -> int:
    """The most of `times` in any window [t, t + window) (one that starts at a time holds
    at least as many as any other)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
