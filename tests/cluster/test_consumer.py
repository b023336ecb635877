"""The owner loop on real NATS, Redis and the Iterable simulator: deliver, then acknowledge."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web

from forwarder.cluster.clients import redis_client
from forwarder.cluster.profiles import decode_value
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.cluster.node_harness import NodeInProcess, cluster_config
from tests.cluster.servers import NatsServer, RedisServer
from tests.harness import eventually, post_events, serve


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.state = SimulatorState()
        self.url = ""
        self.runner: web.AppRunner | None = None


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(require_user_first=True))
    sim.runner, sim.url = await serve(build_simulator_app(sim.config, sim.state))
    try:
        yield sim
    finally:
        await sim.runner.cleanup()


def identify(user: str, email: str, logins: int = 1) -> dict[str, Any]:
    return {
        "event_type": "$identify",
        "user_id": user,
        "user_properties": {"$set": {"email": email, "plan": "pro"}, "$add": {"logins": logins}},
    }


def event(user: str, n: int) -> dict[str, Any]:
    # No insert_id: its Iterable id is salted with the stream sequence and its index.
    return {"event_type": "Viewed", "user_id": user, "event_properties": {"n": n}}


async def stream_messages(nats_url: str, stream: str = "FORWARDER") -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def ack_pending(nats_url: str, partitions: list[int]) -> int:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        total = 0
        for p in partitions:
            info = await js.consumer_info("FORWARDER", f"p{p}")
            total += int(info.num_ack_pending or 0)
        return total
    finally:
        await nc.close()


async def test_one_node_delivers_an_identify_then_events_with_the_email(
    tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer, simulator: Simulator
) -> None:
    config = cluster_config(tmp_path, simulator.url, nats_server.url, redis_server.url, "a")
    node = await NodeInProcess(config).start()
    try:
        await eventually(lambda: len(node.node.partitions.owned) == 4, timeout=15)
        users = [f"user-{i}" for i in range(8)]
        async with aiohttp.ClientSession() as session:
            for user in users:
                status, _ = await post_events(session, node.url, [identify(user, f"{user}@x.io")])
                assert status == 200
            for n in range(5):
                events = [event(user, n) for user in users]
                status, _ = await post_events(session, node.url, events)
                assert status == 200
        state = simulator.state
        await eventually(lambda: len(state.events) >= 40, timeout=20)
        # The user came before its events: the simulator (require_user_first) found every
        # event's user. Every event carries its user's email, and its user's order holds.
        assert not state.failed, state.failed
        by_user: dict[str, list[int]] = defaultdict(list)
        for sent in state.events:
            by_user[sent["email"]].append(sent["dataFields"]["n"])
        assert dict(by_user) == {f"{user}@x.io": list(range(5)) for user in users}
        for user in users:
            assert state.profile(email=f"{user}@x.io") is not None
        await eventually(lambda: node.node.tracker.pending() == 0, timeout=10)
        assert await stream_messages(nats_server.url) == 0
        async with aiohttp.ClientSession() as session:
            async with session.get(node.admin_url + "/status") as response:
                cluster = (await response.json())["cluster"]
            async with session.get(node.admin_url + "/metrics") as response:
                metrics = await response.text()
        assert [row["owner"] for row in cluster["partitions"]] == ["a"] * 4
        published = node.node.ingest.stats.messages
        assert cluster["this_node"]["messages_acknowledged"] == published >= 8 + 5
        assert "forwarder_cluster_partitions_owned 4.0" in metrics
    finally:
        assert await node.drain_and_stop()


async def test_a_message_is_acknowledged_only_once_its_items_are_delivered(
    tmp_path: Path, nats_server: NatsServer, redis_server: RedisServer, simulator: Simulator
) -> None:
    config = cluster_config(tmp_path, simulator.url, nats_server.url, redis_server.url, "a")
    node = await NodeInProcess(config).start()
    try:
        await eventually(lambda: len(node.node.partitions.owned) == 4, timeout=15)
        simulator.config.down_until = time.monotonic() + 3600  # every request: 503
        users = [f"held-{i}" for i in range(6)]
        async with aiohttp.ClientSession() as session:
            status, _ = await post_events(
                session, node.url, [identify(user, f"{user}@x.io") for user in users]
            )
            assert status == 200
            status, _ = await post_events(session, node.url, [event(u, 0) for u in users])
            assert status == 200
        counts = node.node.partitions.counts
        await eventually(lambda: counts.events == 12, timeout=10)
        owned = list(range(4))
        # Fetched and held: none acknowledged, all still in the stream.
        await eventually(lambda: simulator.state.statuses[("users/bulkUpdate", 503)] > 0)
        assert node.node.tracker.counts.acked == 0
        pending = await ack_pending(nats_server.url, owned)
        assert pending > 0
        assert await stream_messages(nats_server.url) == pending
        simulator.config.down_until = 0.0
        await eventually(lambda: len(simulator.state.events) == 6, timeout=20)
        await eventually(lambda: node.node.tracker.pending() == 0, timeout=10)
        assert await stream_messages(nats_server.url) == 0
        assert await ack_pending(nats_server.url, owned) == 0
        assert node.node.tracker.counts.acked == pending
    finally:
        assert await node.drain_and_stop()


@pytest.mark.parametrize("a_stores", [True, False], ids=["a-stores-and-acks", "a-stores-nothing"])
async def test_a_partition_taken_over_mid_flight_delivers_everything_once_with_the_same_ids(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    a_stores: bool,
) -> None:
    urls = (simulator.url, nats_server.url, redis_server.url)
    a = await NodeInProcess(cluster_config(tmp_path, *urls, "a", partitions=2)).start()
    b: NodeInProcess | None = None
    try:
        await eventually(lambda: len(a.node.partitions.owned) == 2, timeout=15)
        if not a_stores:
            # A delivers but dies before any profile flush or acknowledgement: B must do
            # every message again from the stored (empty) profiles.
            await a.node.tracker.stop()
        # A slow Iterable: A has sent part of the work when it dies.
        simulator.config.latency_ms = 150
        users = [f"moving-{i}" for i in range(6)]
        rounds = 6
        async with aiohttp.ClientSession() as session:
            for n in range(rounds):
                # Each round: one identify adding 1 to `logins`, then one event, per user.
                batch: list[dict[str, Any]] = []
                for user in users:
                    batch += [identify(user, f"{user}@x.io"), event(user, n)]
                status, _ = await post_events(session, a.url, batch)
                assert status == 200
        state = simulator.state
        await eventually(lambda: len(state.events) >= 6, timeout=20)
        sent_by_a = len(state.events)
        assert sent_by_a < len(users) * rounds, "A finished before it could be stopped"
        acked_by_a = a.node.tracker.counts.acked
        await a.crash()
        crashed_at = time.monotonic()
        simulator.config.latency_ms = 0
        b = await NodeInProcess(cluster_config(tmp_path, *urls, "b", partitions=2)).start()
        # A's leases run out (lease_seconds = 3) and B takes both partitions.
        await eventually(lambda: len(b.node.partitions.owned) == 2, timeout=10)
        assert time.monotonic() - crashed_at < 10
        await eventually(lambda: len(state.event_ids) == len(users) * rounds, timeout=20)
        await eventually(lambda: b.node.tracker.pending() == 0, timeout=10)
        assert await stream_messages(nats_server.url) == 0
    finally:
        if b is not None:
            assert await b.drain_and_stop()
    # Every event arrived, in its user's order, under one id each (A's sends and B's
    # resends of one event carry the same id).
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for sent in state.events:
        ids[(sent["email"], sent["dataFields"]["n"])].add(sent["id"])
    assert set(ids) == {(f"{u}@x.io", n) for u in users for n in range(rounds)}
    assert all(len(found) == 1 for found in ids.values()), ids
    assert b is not None and b.node.deliveries[0].stats.delivered["events/trackBulk"] > 0
    if not a_stores:
        # B sent again what A had sent (its messages were never acknowledged): same ids.
        assert acked_by_a == 0
        assert len(state.events) >= len(state.event_ids) + sent_by_a
    # Each identify's `$add` applied once: in Redis and at Iterable.
    probe = redis_client(redis_server.url)
    try:
        for user in users:
            value = await probe.get(f"forwarder:profile:{user}")
            assert value is not None
            _, profile = decode_value(value)
            assert profile["logins"] == rounds, (user, profile)
            person = state.profile(email=f"{user}@x.io")
            assert person is not None and person["logins"] == rounds
    finally:
        await probe.aclose()
