"""`forwarder dead-letters replay` in cluster mode, run as the operator runs it (a
subprocess) against a real Redis and the Iterable simulator: the chosen letters are
delivered as they were and leave Redis, a failing one comes back with its first failure,
a replay killed -9 loses nothing, and two replays at once keep to one shared rate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from forwarder.cluster.clients import redis_client
from forwarder.cluster.dead_letters import DEFAULT_PREFIX, RedisDeadLetters, cluster_dead_letters
from forwarder.cluster.replay_aside import HEARTBEAT_SECONDS, new_aside
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, TrackEvent
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import DeadLetter, make_letter
from tests.cluster.node_harness import NodeInProcess
from tests.cluster.node_harness import cluster_config as node_config
from tests.cluster.servers import NatsServer, RedisServer, client_module
from tests.harness import serve

client_module("redis", "redis")
client_module("nats", "nats-py")

ROOT = Path(__file__).resolve().parents[2]
ASIDES = "forwarder:dead-aside:*"
CREATED_AT = 1_700_000_000


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.state = SimulatorState()
        self.url = ""
        self.runner: web.AppRunner | None = None

    def delivered_ids(self) -> list[str]:
        return [str(event["id"]) for event in self.state.events]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig())
    sim.runner, sim.url = await serve(build_simulator_app(sim.config, sim.state))
    try:
        yield sim
    finally:
        await sim.runner.cleanup()


def event(n: int, domain: str = "x.io") -> TrackEvent:
    return TrackEvent(eventName="Bought", id=f"ev-{n}", createdAt=CREATED_AT, email=f"{n}@{domain}")


def letters(numbers: range, kind: FailureKind, domain: str = "x.io") -> list[DeadLetter]:
    failure = Failure(kind, "refused")
    return [make_letter("test", Endpoint.TRACK_BULK, event(n, domain), failure, 3) for n in numbers]


def write_config(
    tmp_path: Path, redis_url: str, sim_url: str, per_second: float = 10, headroom: float = 0.05
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
api_keys = ["amplitude-key-for-tests"]

[storage]
path = "{tmp_path / "var"}"

[cluster]
nats_url = "nats://127.0.0.1:1"
redis_url = "{redis_url}"
node = "replay-test"

[[syncs]]
name = "test"
api_key = "iterable-secret-key-0123456789"
base_url = "{sim_url}"

[syncs.limits]
track_bulk_per_second = {per_second}
max_events_per_request = 5

[syncs.delivery]
linger_ms = 20
backoff_initial_seconds = 0.02
backoff_max_seconds = 0.2
max_attempts = 3
rate_headroom = {headroom}
"""
    )
    return path


async def start_cli(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "dead-letters",
        *args,
        "--config",
        str(config),
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    return await finish(await start_cli(config, *args))


async def stored(redis_url: str) -> tuple[list[DeadLetter], int, int]:
    """The sync's letters in Redis, the byte counter, and the sum of their lines' bytes."""
    async with redis_client(redis_url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        entries = [s async for s in sink.read()]
        counter = await sink.refresh()
    found = [s.letter for s in entries if isinstance(s.letter, DeadLetter)]
    return found, counter, sum(len(s.line) - 1 for s in entries)


async def asides(redis_url: str) -> list[str]:
    async with redis_client(redis_url) as client:
        return [k.decode() async for k in client.scan_iter(match=ASIDES, _type="stream")]


async def test_replay_delivers_the_chosen_letters_and_a_failing_one_comes_back(
    redis_server: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, redis_server.url, simulator.url)
    async with redis_client(redis_server.url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await sink.write(letters(range(5), FailureKind.RETRIES_EXHAUSTED))
        # The simulator reports this one's email as invalid: it fails again.
        await sink.write(letters(range(5, 6), FailureKind.RETRIES_EXHAUSTED, "invalid.test"))
        await sink.write(letters(range(6, 8), FailureKind.USER_NOT_FOUND))
    before, _, _ = await stored(redis_server.url)
    failing_since = before[5].time

    code, out, err = await cli(config, "replay", "--reason", "retries_exhausted", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "sync": "test",
        "resent": 6,
        "delivered": 5,
        "dead_again": 1,
        "left": 0,
        "unsendable": 0,
    }
    assert "resent 6, delivered 5, dead again 1, left 0" in err  # the progress line

    # Delivered as they were: their ids and createdAt untouched.
    events = simulator.state.events
    assert sorted(str(e["id"]) for e in events) == [f"ev-{n}" for n in range(5)]
    assert {e["createdAt"] for e in events} == {CREATED_AT}

    after, counter, line_bytes = await stored(redis_server.url)
    assert [letter.item["id"] for letter in after] == ["ev-6", "ev-7", "ev-5"]
    again = after[2]
    assert again.first_failed_at == failing_since and again.time > failing_since
    assert again.kind == FailureKind.INVALID_IDENTITY.value
    # Nothing left aside, and the cap's counter is what the stream holds.
    assert await asides(redis_server.url) == [] and counter == line_bytes


async def test_dry_run_changes_nothing(
    redis_server: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, redis_server.url, simulator.url)
    async with redis_client(redis_server.url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await sink.write(letters(range(4), FailureKind.USER_NOT_FOUND))
        before = await client.xrange(sink.key)

    code, out, err = await cli(config, "replay", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["by_kind"] == {"user_not_found": 4}
    async with redis_client(redis_server.url) as client:
        assert await client.xrange(sink.key) == before
    assert simulator.state.requests == [] and await asides(redis_server.url) == []


async def test_a_replay_killed_mid_way_loses_nothing(
    redis_server: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    # Two requests a second of five events each: 60 letters take some six seconds.
    config = write_config(tmp_path, redis_server.url, simulator.url, per_second=2)
    every = [f"ev-{n}" for n in range(60)]
    async with redis_client(redis_server.url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await sink.write(letters(range(60), FailureKind.USER_NOT_FOUND))

    replay = await start_cli(config, "replay")
    try:
        deadline = time.monotonic() + 30
        while len(simulator.state.events) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(simulator.state.events) >= 10, "the replay never got going"
        replay.send_signal(signal.SIGKILL)
    finally:
        await finish(replay)
    delivered = set(simulator.delivered_ids())
    assert delivered < set(every)

    # The aside is still there with its heartbeat counting down.
    (aside,) = await asides(redis_server.url)
    async with redis_client(redis_server.url) as client:
        ttl = await client.ttl(f"{aside}:alive")
        assert 0 < ttl <= HEARTBEAT_SECONDS
        # Stand in for the TTL running out (30 s).
        await client.pexpire(f"{aside}:alive", 1)
        deadline = time.monotonic() + 5
        while await client.exists(f"{aside}:alive") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    code, out, err = await cli(config, "list", "--json")
    assert code == 0, err
    assert await asides(redis_server.url) == []
    back, counter, line_bytes = await stored(redis_server.url)
    back_ids = [str(letter.item["id"]) for letter in back]
    # Every letter is delivered or back (some may be both: at worst twice, never lost).
    assert delivered | set(back_ids) == set(every)
    assert len(back_ids) == len(set(back_ids)) and counter == line_bytes
    assert json.loads(out)["total"] == len(back_ids)


async def test_two_replays_at_once_keep_to_one_shared_rate(
    redis_server: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    # Iterable's limit and the config's alike: each replay alone would use all of it.
    simulator.config.track_bulk_per_second = 4
    # Headroom as wide as a busy test machine needs: a request the simulator's loop takes
    # in late must not bunch with the next. Unshared, two replays would still send 6.7/s.
    config = write_config(tmp_path, redis_server.url, simulator.url, per_second=4, headroom=0.2)
    async with redis_client(redis_server.url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await sink.write(letters(range(40), FailureKind.USER_NOT_FOUND))
        await sink.write(letters(range(40, 80), FailureKind.RETRIES_EXHAUSTED))

    first = await start_cli(config, "replay", "--reason", "user_not_found", "--json")
    second = await start_cli(config, "replay", "--reason", "retries_exhausted", "--json")
    results = [await finish(first), await finish(second)]
    for code, out, err in results:
        assert code == 0, err
        assert json.loads(out)["delivered"] == 40, out

    stats = simulator.state.stats()
    track = Endpoint.TRACK_BULK.value
    assert sorted(simulator.delivered_ids()) == sorted(f"ev-{n}" for n in range(80))
    # At five events a request, at least 16 requests: four seconds' worth at the limit.
    assert stats["requests"][track]["200"] >= 16
    assert stats["max_requests_in_one_second"][track] <= 4
    assert stats["rate_limited"] == 0
    assert (await stored(redis_server.url))[0] == []


async def test_a_node_at_start_puts_back_only_the_asides_whose_replay_died(
    nats_server: NatsServer, redis_server: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    config = node_config(tmp_path, simulator.url, nats_server.url, redis_server.url, "n1")
    live, dead = new_aside(config, "test"), new_aside(config, "test")
    async with redis_client(redis_server.url) as client:
        sink = cluster_dead_letters(config, client, "test")
        await sink.write(letters(range(6), FailureKind.USER_NOT_FOUND))
        entries = [s async for s in sink.read()]
        # A replay still running (its heartbeat set) and one killed (its heartbeat gone).
        await client.set(live.heartbeat, "pid 1", ex=HEARTBEAT_SECONDS)
        assert len(await sink.move_aside(entries[:2], live.stream)) == 2
        assert len(await sink.move_aside(entries[2:4], dead.stream)) == 2
        # Taken already: a second replay choosing the same letters moves nothing.
        assert await sink.move_aside(entries[:4], dead.stream) == []

    node = await NodeInProcess(config).start()
    try:
        assert await asides(redis_server.url) == [live.stream]
        back, counter, line_bytes = await stored(redis_server.url)
        assert [letter.item["id"] for letter in back] == ["ev-4", "ev-5", "ev-2", "ev-3"]
        assert counter == line_bytes
        async with redis_client(redis_server.url) as client:
            assert await client.xlen(live.stream) == 2
            assert not await client.exists(dead.heartbeat)
    finally:
        await node.drain_and_stop()


@pytest.mark.parametrize("how", ["ctrl-c", "timeout"])
async def test_a_replay_stopped_early_puts_back_what_did_not_settle(
    redis_server: RedisServer, simulator: Simulator, tmp_path: Path, how: str
) -> None:
    config = write_config(tmp_path, redis_server.url, simulator.url, per_second=2)
    every = {f"ev-{n}" for n in range(60)}
    async with redis_client(redis_server.url) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await sink.write(letters(range(60), FailureKind.USER_NOT_FOUND))

    timeout = ["--timeout", "2"] if how == "timeout" else []
    replay = await start_cli(config, "replay", "--json", *timeout)
    if how == "ctrl-c":
        deadline = time.monotonic() + 30
        while len(simulator.state.events) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        replay.send_signal(signal.SIGINT)
    code, out, err = await finish(replay)
    assert code == 0, err
    counts = json.loads(out)
    delivered = set(simulator.delivered_ids())
    # A request out when it stopped may have reached Iterable unanswered: sent again later.
    assert 0 < counts["delivered"] <= len(delivered) and counts["left"] > 0
    assert counts["delivered"] + counts["left"] == 60

    back, counter, line_bytes = await stored(redis_server.url)
    back_ids = {str(letter.item["id"]) for letter in back}
    assert await asides(redis_server.url) == [] and counter == line_bytes
    assert delivered | back_ids == every and len(back) == counts["left"]
