"""ClusterIngest on a real NATS: a request's events land by partition, in order, and are
answered only once JetStream stored them; a refusal or an outage is a 429, then recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from forwarder.cluster.publish import ClusterIngest
from forwarder.cluster.stream import connect, ensure_stream
from forwarder.cluster.wire import decode_batch, partition_of
from forwarder.config import ClusterConfig, ServerConfig
from forwarder.errors import IngestThrottled
from forwarder.ingest.amplitude import Event, RejectedRequest
from forwarder.ingest.app import STATE_KEY, build_app
from tests.cluster.servers import NatsServer, client_module
from tests.harness import serve

client_module("nats", "nats-py")

from nats.aio.client import Client as NATS  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402

PARTITIONS = 64
KEY = "amp-key-123"
TIMEOUT = 2.0
# Bounds every wait for NATS to come back: the client retries every 0.5 s.
RECONNECT_SECONDS = 15.0


class Node:
    """One node's ingest side: its connection, the checked stream and the sink."""

    def __init__(self, nc: NATS, js: JetStreamContext, sink: ClusterIngest) -> None:
        self.nc, self.js, self.sink = nc, js, sink

    async def stored(self) -> list[tuple[str, int, list[Event]]]:
        """Every message in the stream, in order: (subject, received_at, events)."""
        info = await self.js.stream_info("FORWARDER")
        if info.state.messages == 0:
            return []
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await self.js.get_msg("FORWARDER", seq)
            assert message.subject is not None and message.data is not None
            batch = decode_batch(message.data)
            found.append((message.subject, batch.received_at, batch.events))
        return found

    async def reconnected(self) -> None:
        deadline = time.monotonic() + RECONNECT_SECONDS
        while not self.nc.is_connected:
            assert time.monotonic() < deadline, "the client did not reconnect to NATS"
            await asyncio.sleep(0.05)


def config_for(server: NatsServer, **fields: Any) -> ClusterConfig:
    fields.setdefault("publish_timeout_seconds", TIMEOUT)
    return ClusterConfig(nats_url=server.url, node="node-a", partitions=PARTITIONS, **fields)


async def start_node(server: NatsServer, **fields: Any) -> Node:
    config = config_for(server, **fields)
    nc, js = await connect(config, wait_seconds=10)
    await ensure_stream(js, config)
    return Node(nc, js, ClusterIngest(nc, js, config, clock=lambda: 1_700_000_000.5))


@pytest.fixture
async def node(nats_server: NatsServer) -> AsyncIterator[Node]:
    started = await start_node(nats_server)
    try:
        yield started
    finally:
        await started.nc.close()


def event(user: str, n: int, **fields: Any) -> Event:
    return Event(event_type="Purchase", user_id=user, insert_id=f"{user}-{n}", **fields)


async def test_a_request_lands_as_one_message_per_partition_in_order(node: Node) -> None:
    users = [f"user-{i:05}" for i in range(30)]
    request = [event(users[(n * 7) % 30], n) for n in range(100)]
    await node.sink.accept(request)
    stored = await node.stored()
    wanted: dict[int, list[Event]] = {}
    for item in request:
        wanted.setdefault(partition_of(item.amplitude_user, PARTITIONS), []).append(item)
    assert len(stored) == len(wanted)
    # Partitions in the order the request first named them, each with its events in order.
    assert [subject for subject, _, _ in stored] == [f"forwarder.events.{p}" for p in wanted]
    assert [events for _, _, events in stored] == list(wanted.values())
    assert {received_at for _, received_at, _ in stored} == {1_700_000_000}
    assert (node.sink.stats.requests, node.sink.stats.messages) == (1, len(wanted))
    assert node.sink.stats.events == 100

    # A second request adds its own messages behind the first's: no merging across requests.
    await node.sink.accept([event(users[0], 100), event(users[0], 101)])
    again = await node.stored()
    assert len(again) == len(wanted) + 1
    assert again[-1][2] == [event(users[0], 100), event(users[0], 101)]


async def test_a_partition_larger_than_max_payload_goes_in_consecutive_messages(
    node: Node,
) -> None:
    limit = node.nc.max_payload
    padding = "x" * 1000
    request = [event("user-00001", n, event_properties={"pad": padding}) for n in range(2000)]
    await node.sink.accept(request)
    stored = await node.stored()
    assert len(stored) > 1  # 2,000 events of 1 KB do not fit in one message
    assert {subject for subject, _, _ in stored} == {
        f"forwarder.events.{partition_of('user-00001', PARTITIONS)}"
    }
    assert [e for _, _, events in stored for e in events] == request
    for seq in range(1, len(stored) + 1):
        message = await node.js.get_msg("FORWARDER", seq)
        assert message.data is not None and len(message.data) <= limit


async def test_an_event_larger_than_any_message_is_a_413_and_nothing_is_sent(node: Node) -> None:
    huge = {f"key-{i}": "y" * 1000 for i in range(node.nc.max_payload // 1000 + 10)}
    with pytest.raises(RejectedRequest) as caught:
        await node.sink.accept(
            [event("user-00002", 0), event("user-00001", 1, event_properties=huge)]
        )
    assert caught.value.status == 413
    assert await node.stored() == []


async def test_a_full_stream_refuses_and_the_request_is_throttled_at_once(
    nats_server: NatsServer,
) -> None:
    node = await start_node(nats_server, max_stream_bytes=4096)
    try:
        await node.sink.accept([event("user-00001", 0)])  # fits
        big = [event("user-00001", n, event_properties={"pad": "z" * 500}) for n in range(20)]
        started = time.monotonic()
        with pytest.raises(IngestThrottled, match="JetStream refused the events"):
            await node.sink.accept(big)
        # JetStream's answer, not the timeout: the refusal comes back with the ack.
        assert time.monotonic() - started < TIMEOUT
        assert node.sink.stats.failures == {"refused": 1}
        assert len(await node.stored()) == 1
    finally:
        await node.nc.close()


async def test_nats_stopped_throttles_within_the_timeout_then_recovers(
    nats_server: NatsServer, node: Node
) -> None:
    await node.sink.accept([event("user-00001", 0)])
    await nats_server.stop()
    started = time.monotonic()
    with pytest.raises(IngestThrottled, match="NATS is unreachable|did not acknowledge"):
        await node.sink.accept([event("user-00001", 1)])
    assert time.monotonic() - started <= TIMEOUT + 1.0
    assert node.sink.refusal(1) == "NATS is unreachable (reconnecting): retry later"

    assert node.sink.in_flight == 0  # what was given up on holds nothing

    await nats_server.start()
    await node.reconnected()
    assert node.sink.refusal(1) is None
    await node.sink.accept([event("user-00001", 2)])
    # The stream kept what it had (file storage), and the refused request left nothing.
    assert [events for _, _, events in await node.stored()] == [
        [event("user-00001", 0)],
        [event("user-00001", 2)],
    ]


async def test_no_stream_for_the_subjects_is_throttled_at_once(nats_server: NatsServer) -> None:
    config = config_for(nats_server)
    nc, js = await connect(config, wait_seconds=10)
    try:
        sink = ClusterIngest(nc, js, config)
        started = time.monotonic()
        with pytest.raises(IngestThrottled, match=r"no JetStream stream takes forwarder.events"):
            await sink.accept([event("user-00001", 0)])
        assert time.monotonic() - started < TIMEOUT
        assert sink.stats.failures == {"no_stream": 1} and sink.in_flight == 0
    finally:
        await nc.close()


async def test_concurrent_requests_are_each_stored_whole(node: Node) -> None:
    requests = [[event(f"user-{r:05}", n) for n in range(10)] for r in range(40)]
    await asyncio.gather(*(node.sink.accept(request) for request in requests))
    stored = await node.stored()
    assert len(stored) == 40  # one user per request: one message each
    by_user = {events[0].user_id: events for _, _, events in stored}
    assert by_user == {request[0].user_id: request for request in requests}
    assert node.sink.in_flight == 0


async def post(session: aiohttp.ClientSession, url: str, events: list[dict[str, Any]]) -> Any:
    body = msgspec.json.encode({"api_key": KEY, "events": events})
    async with session.post(
        url + "/2/httpapi", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json()


async def test_ingest_answers_429_while_nats_is_down_and_200_after(
    nats_server: NatsServer, node: Node
) -> None:
    app = build_app(ServerConfig(api_keys=[KEY]), node.sink)
    app[STATE_KEY].ready = True
    runner, url = await serve(app)
    events = [
        {"event_type": "Purchase", "user_id": f"user-{i:05}", "insert_id": f"i-{i}"}
        for i in range(3)
    ]
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, url, events))[0] == 200
            await nats_server.stop()
            status, body = await post(session, url, events)
            assert status == 429
            assert body["code"] == 429 and body["throttled_events"] == [0, 1, 2]
            assert "NATS" in body["error"]

            await nats_server.start()
            await node.reconnected()
            status, body = await post(session, url, events)
            assert status == 200 and body["events_ingested"] == 3
    finally:
        await runner.cleanup()
    state = app[STATE_KEY]
    assert state.events_accepted == 6 and state.events_throttled == 3
    stored = [e.insert_id for _, _, events in await node.stored() for e in events]
    assert sorted(stored) == ["i-0", "i-0", "i-1", "i-1", "i-2", "i-2"]
