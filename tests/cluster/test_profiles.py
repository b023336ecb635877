"""RedisProfileStore on a real Redis: applied once per stream sequence, never overwritten
by a stale writer, loaded in one round trip, and typed errors while Redis is down."""

from __future__ import annotations

import time

import pytest

from forwarder.cluster.clients import redis_client
from forwarder.cluster.profiles import (
    CHUNK,
    ProfileStoreUnavailable,
    RedisProfileStore,
    decode_value,
    encode_value,
)
from forwarder.store.profile_ops import apply_user_properties
from tests.cluster.servers import RedisServer, client_module

client_module("redis", "redis")


def add_one(store: RedisProfileStore, user: str) -> None:
    """What the intake does for {"$add": {"count": 1}}: read, change a copy, put."""
    profile = dict(store.get(user))
    apply_user_properties(profile, {"$add": {"count": 1}})
    store.put(user, profile)


async def command_calls(server: RedisServer, command: str) -> int:
    async with redis_client(server.url) as admin:
        stats = await admin.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


def test_a_value_is_msgpack_with_a_fixed_width_seq() -> None:
    value = encode_value(5, {"email": "a@example.com"})
    assert decode_value(value) == (5, {"email": "a@example.com"})
    # Any msgpack reader sees [5, {...}].
    import msgspec

    assert msgspec.msgpack.decode(value) == [5, {"email": "a@example.com"}]


async def test_a_redelivered_sequence_applies_add_once_across_two_nodes(
    redis_server: RedisServer,
) -> None:
    async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
        first = RedisProfileStore(one, capacity=100)
        await first.load(["u1"])
        assert first.is_new("u1")
        first.begin(10)
        add_one(first, "u1")
        await first.flush()
        assert first.flushed_through == 10

        # The node died before acknowledging seq 10: another node processes it again.
        second = RedisProfileStore(two, capacity=100)
        await second.load(["u1"])
        assert not second.is_new("u1") and second.applied("u1") == 10
        second.begin(10)
        add_one(second, "u1")
        await second.flush()
        assert second.counts.already_applied == 1

        # The next message applies as usual.
        second.begin(11)
        add_one(second, "u1")
        await second.flush()

        third = RedisProfileStore(one, capacity=100)
        await third.load(["u1"])
        assert third.get("u1") == {"count": 2}
        assert third.applied("u1") == 11


async def test_a_stale_writer_never_overwrites(redis_server: RedisServer) -> None:
    async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
        new_owner = RedisProfileStore(one, capacity=100)
        old_owner = RedisProfileStore(two, capacity=100)
        await old_owner.load(["u"])
        await new_owner.load(["u"])
        new_owner.begin(10)
        new_owner.put("u", {"who": "new owner"})
        await new_owner.flush()

        # The old owner, fenced late, still flushes a put of seq 9 (its cache said new).
        old_owner.begin(9)
        old_owner.put("u", {"who": "old owner"})
        await old_owner.flush()
        assert old_owner.counts.stale_refused == 1
        # Its stale copy is dropped: a later load reads what the new owner wrote.
        await old_owner.load(["u"])
        assert old_owner.get("u") == {"who": "new owner"}

        check = RedisProfileStore(one, capacity=100)
        await check.load(["u"])
        assert check.get("u") == {"who": "new owner"} and check.applied("u") == 10


async def test_loading_a_thousand_users_is_one_round_trip(redis_server: RedisServer) -> None:
    users = [f"user-{n}" for n in range(CHUNK)]
    async with redis_client(redis_server.url) as client:
        writer = RedisProfileStore(client, capacity=10_000)
        writer.begin(1)
        for user in users[::2]:
            writer.put(user, {"n": user})
        await writer.flush()

        reader = RedisProfileStore(client, capacity=10_000)
        before = await command_calls(redis_server, "mget")
        await reader.load(users)
        assert await command_calls(redis_server, "mget") == before + 1
        assert reader.get("user-0") == {"n": "user-0"} and reader.is_new("user-1")

        # Cached: loading them again asks Redis nothing.
        await reader.load(users)
        assert await command_calls(redis_server, "mget") == before + 1


async def test_the_cache_is_bounded_and_keeps_only_owned_partitions(
    redis_server: RedisServer,
) -> None:
    async with redis_client(redis_server.url) as client:
        store = RedisProfileStore(client, capacity=3, partition_of=lambda user: int(user[-1]) % 2)
        store.begin(1)
        await store.load(["u0", "u1", "u2", "u3", "u4"])
        assert store.counts.evicted == 2
        for user in ["u0", "u1", "u2"]:
            store.put(user, {"u": user})
        await store.flush()

        store.keep_only({0})
        before = await command_calls(redis_server, "mget")
        # u1 (partition 1) is read again although it was cached; u0 and u2 are not.
        await store.load(["u0", "u1", "u2"])
        assert await command_calls(redis_server, "mget") == before + 1
        assert store.counts.loaded == 5 + 1


async def test_a_redis_restart_keeps_profiles_and_an_outage_is_a_typed_error(
    redis_server: RedisServer,
) -> None:
    async with redis_client(redis_server.url, timeout=0.5) as client:
        store = RedisProfileStore(client, capacity=100)
        store.begin(3)
        store.put("kept", {"plan": "pro"})
        await store.flush()

        await redis_server.stop()
        store.begin(4)
        store.put("waiting", {"plan": "free"})
        with pytest.raises(ProfileStoreUnavailable):
            await store.flush()
        with pytest.raises(ProfileStoreUnavailable):
            await RedisProfileStore(client, capacity=100).load(["kept"])
        assert store.flushed_through == 3

        await redis_server.start()
        # The put waited, unflushed: the retried flush writes it.
        await store.flush()
        assert store.flushed_through == 4
        check = RedisProfileStore(client, capacity=100)
        await check.load(["kept", "waiting"])
        assert check.get("kept") == {"plan": "pro"}
        assert check.get("waiting") == {"plan": "free"}


async def test_put_before_begin_is_refused(redis_server: RedisServer) -> None:
    async with redis_client(redis_server.url) as client:
        store = RedisProfileStore(client, capacity=10)
        with pytest.raises(RuntimeError):
            store.put("u", {})


async def test_load_and_flush_rates(redis_server: RedisServer) -> None:
    """Figures for the report: users loaded and flushed per second, in 1,000-user batches."""
    count = 20_000
    users = [f"rate-{n}" for n in range(count)]
    profile = {"email": "someone@example.com", "plan": "pro", "count": 7}
    async with redis_client(redis_server.url) as client:
        writer = RedisProfileStore(client, capacity=count)
        started = time.perf_counter()
        for seq, start in enumerate(range(0, count, CHUNK), 1):
            writer.begin(seq)
            for user in users[start : start + CHUNK]:
                writer.put(user, profile)
            await writer.flush()
        flushed = time.perf_counter() - started
        reader = RedisProfileStore(client, capacity=count)
        started = time.perf_counter()
        for start in range(0, count, CHUNK):
            await reader.load(users[start : start + CHUNK])
        loaded = time.perf_counter() - started
        assert reader.get(users[-1]) == profile
        assert writer.counts.flushed == count and reader.counts.loaded == count
    print(
        f"\nprofiles: flushed {count / flushed:,.0f} users/s, loaded {count / loaded:,.0f} users/s"
    )
