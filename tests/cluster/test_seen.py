"""RedisSeenInserts on a real Redis: a key one node used is a repeat on another, a
redelivered message is not a repeat of itself, and the intake fetches keys first."""

from __future__ import annotations

import msgspec
import pytest

from forwarder.cluster.clients import redis_client
from forwarder.cluster.profiles import RedisProfileStore
from forwarder.cluster.seen import RedisSeenInserts, SeenStoreUnavailable
from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake
from forwarder.iterable import Endpoint
from tests.cluster.servers import RedisServer, client_module

client_module("redis", "redis")

NOW = 1_800_000_000
WINDOW = 7 * 24 * 3600
SYNC = msgspec.convert({"name": "s", "api_key": "k"}, SyncConfig)


async def test_a_key_used_on_one_node_is_a_repeat_on_another(redis_server: RedisServer) -> None:
    async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
        first = RedisSeenInserts(one, WINDOW)
        first.begin(5)
        await first.fetch([b"k" * 16])
        assert not first.seen(b"k" * 16, NOW)
        first.add([b"k" * 16], NOW)
        await first.flush()

        second = RedisSeenInserts(two, WINDOW)
        await second.fetch([b"k" * 16, b"x" * 16])
        second.begin(7)
        assert second.seen(b"k" * 16, NOW)
        assert not second.seen(b"x" * 16, NOW)
        # Message 5 delivered again (a failover): its own key is not a repeat of itself.
        second.begin(5)
        assert not second.seen(b"k" * 16, NOW)
        # Past the window it is no repeat either.
        second.begin(7)
        assert not second.seen(b"k" * 16, NOW + WINDOW)

        ttl = await one.ttl(first.key(b"k" * 16))
        assert 0 < ttl <= WINDOW


async def test_the_intake_dedupes_across_nodes_but_not_a_redelivery(
    redis_server: RedisServer,
) -> None:
    email = {"$set": {"email": "u1@example.com"}}
    event = Event(event_type="Bought", user_id="u1", insert_id="order-1", user_properties=email)

    def node(client: object) -> tuple[Intake, RedisProfileStore, RedisSeenInserts]:
        profiles = RedisProfileStore(client, capacity=100)  # type: ignore[arg-type]
        seen = RedisSeenInserts(client, WINDOW)  # type: ignore[arg-type]
        return Intake([SYNC], profiles, 1 << 20, seen), profiles, seen

    async def run(
        intake: Intake, profiles: RedisProfileStore, seen: RedisSeenInserts, seq: int
    ) -> list[Endpoint]:
        await intake.load([event])
        profiles.begin(seq)
        seen.begin(seq)
        intaken = intake.process([event], NOW)
        intake.commit(intaken)
        await profiles.flush()
        await seen.flush()
        return [e for _, e, _, _ in intaken.routed if e is Endpoint.TRACK_BULK]

    async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
        assert len(await run(*node(one), seq=10)) == 1
        # The same message on another node after a failover: routed again.
        assert len(await run(*node(two), seq=10)) == 1
        # A later message with the same insert_id: a repeat, routed nowhere.
        assert await run(*node(two), seq=11) == []


async def test_an_outage_is_a_typed_error_and_unwritten_keys_wait(
    redis_server: RedisServer,
) -> None:
    async with redis_client(redis_server.url, timeout=0.5) as client:
        seen = RedisSeenInserts(client, WINDOW)
        seen.begin(1)
        await redis_server.stop()
        seen.add([b"w" * 16], NOW)
        with pytest.raises(SeenStoreUnavailable):
            await seen.flush()
        with pytest.raises(SeenStoreUnavailable):
            await seen.fetch([b"z" * 16])
        await redis_server.start()
        await seen.flush()
        other = RedisSeenInserts(client, WINDOW)
        await other.fetch([b"w" * 16])
        other.begin(2)
        assert other.seen(b"w" * 16, NOW)
