"""The stream and buckets on a real NATS: created once, checked against every node's config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from forwarder.cluster.errors import ClusterUnavailable
from forwarder.cluster.stream import (
    PARTITIONS_KEY,
    StreamMismatch,
    connect,
    ensure_buckets,
    ensure_stream,
    lease_bucket,
    node_bucket,
)
from forwarder.config import ClusterConfig
from tests.cluster.servers import NatsServer, client_module
from tests.processes import free_port

client_module("nats", "nats-py")

from nats.aio.client import Client as NATS  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js import api as js_api  # noqa: E402


def cluster(server: NatsServer, **fields: Any) -> ClusterConfig:
    return ClusterConfig(nats_url=server.url, node="node-a", **fields)


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc, js = await connect(cluster(nats_server), wait_seconds=10)
    try:
        yield nc, js
    finally:
        await nc.close()


async def test_the_stream_is_created_as_the_design_says(
    nats_server: NatsServer, nats_client: tuple[NATS, JetStreamContext]
) -> None:
    _, js = nats_client
    config = cluster(nats_server, partitions=16, max_stream_bytes=50_000_000)
    info = await ensure_stream(js, config)
    found = info.config
    assert found.name == "FORWARDER"
    assert found.subjects == ["forwarder.events.*"]
    assert found.retention == js_api.RetentionPolicy.WORK_QUEUE
    assert found.discard == js_api.DiscardPolicy.NEW
    assert found.storage == js_api.StorageType.FILE
    assert found.max_bytes == 50_000_000
    assert (found.metadata or {})[PARTITIONS_KEY] == "16"
    # A second node (or a restart) with the same config finds it as it is.
    again = await ensure_stream(js, config)
    assert again.config.subjects == found.subjects and again.state.messages == 0


async def test_a_node_whose_partition_count_disagrees_refuses_naming_both(
    nats_server: NatsServer, nats_client: tuple[NATS, JetStreamContext]
) -> None:
    _, js = nats_client
    await ensure_stream(js, cluster(nats_server, partitions=64))
    with pytest.raises(StreamMismatch) as caught:
        await ensure_stream(js, cluster(nats_server, partitions=32))
    message = str(caught.value)
    assert "FORWARDER has 64 partitions" in message and "cluster.partitions is 32" in message
    # ...and the stream is left as it was.
    info = await js.stream_info("FORWARDER")
    assert (info.config.metadata or {})[PARTITIONS_KEY] == "64"


async def test_a_stream_of_other_subjects_or_retention_is_refused(
    nats_server: NatsServer, nats_client: tuple[NATS, JetStreamContext]
) -> None:
    _, js = nats_client
    await js.add_stream(name="OTHER", subjects=["other.>"])
    with pytest.raises(StreamMismatch, match=r"takes subjects \['other.>'\].*other.events.\*"):
        await ensure_stream(js, cluster(nats_server, stream="OTHER"))
    await js.add_stream(name="LIMITS", subjects=["limits.events.*"])
    with pytest.raises(StreamMismatch, match="limits retention"):
        await ensure_stream(js, cluster(nats_server, stream="LIMITS"))
    await js.add_stream(
        name="QUEUE",
        subjects=["queue.events.*"],
        retention=js_api.RetentionPolicy.WORK_QUEUE,
    )
    with pytest.raises(StreamMismatch, match="not created by forwarder"):
        await ensure_stream(js, cluster(nats_server, stream="QUEUE"))


async def test_a_raised_cap_is_applied_to_the_stream(
    nats_server: NatsServer, nats_client: tuple[NATS, JetStreamContext]
) -> None:
    _, js = nats_client
    await ensure_stream(js, cluster(nats_server, max_stream_bytes=10_000_000))
    info = await ensure_stream(js, cluster(nats_server, max_stream_bytes=20_000_000))
    assert info.config.max_bytes == 20_000_000
    assert (await js.stream_info("FORWARDER")).config.max_bytes == 20_000_000


async def test_lease_and_node_buckets_expire_entries_after_lease_seconds(
    nats_server: NatsServer, nats_client: tuple[NATS, JetStreamContext]
) -> None:
    _, js = nats_client
    config = cluster(nats_server, lease_seconds=2)
    assert (lease_bucket(config), node_bucket(config)) == ("FORWARDER_leases", "FORWARDER_nodes")
    leases, nodes = await ensure_buckets(js, config)
    assert (await leases.status()).ttl == 2 and (await nodes.status()).ttl == 2
    # Compare-and-set as the leases use it: create fails when present, update needs the
    # last revision.
    revision = await leases.create("p.3", b"node-a")
    with pytest.raises(Exception, match="wrong last sequence"):
        await leases.create("p.3", b"node-b")
    assert await leases.update("p.3", b"node-a", last=revision) > revision
    # The same config again (another node starting) finds them as they are.
    again, _ = await ensure_buckets(js, config)
    assert (await again.get("p.3")).value == b"node-a"
    with pytest.raises(StreamMismatch, match="keeps entries 2 s, cluster.lease_seconds is 6"):
        await ensure_buckets(js, cluster(nats_server, lease_seconds=6))


async def test_connect_takes_the_first_server_that_answers(nats_server: NatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    config = ClusterConfig(
        nats_url=[dead, nats_server.url], node="node-a", connect_timeout_seconds=1
    )
    nc, js = await connect(config, wait_seconds=10)
    try:
        assert nc.is_connected
        info = await ensure_stream(js, config)
        assert info.config.name == "FORWARDER"
    finally:
        await nc.close()


async def test_connect_gives_up_naming_the_servers_when_none_answers() -> None:
    url = f"nats://user:secret@127.0.0.1:{free_port()}"
    config = ClusterConfig(nats_url=url, node="node-a", connect_timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable) as caught:
        await connect(config, wait_seconds=1.5)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("cluster.nats_url: no NATS server answered within 1.5 s")
    assert url.rpartition("@")[2] in message and "secret" not in message
    await asyncio.sleep(0)  # the abandoned connect's tasks wind down without warnings
