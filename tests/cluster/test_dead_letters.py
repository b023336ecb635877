"""Dead letters in Redis: one cap per sync for every node, settled only once written
(retried while Redis is down), and read, shown and purged by the CLI in cluster mode."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from forwarder.cluster.clients import redis_client
from forwarder.cluster.dead_letters import DEFAULT_PREFIX, RedisDeadLetters
from forwarder.deliver.lanes import Queued
from forwarder.deliver.settle import Settlement
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, TrackEvent
from forwarder.store.dead_letters import DeadLetter, DeadLetterCapReached, make_letter
from tests.cluster.servers import RedisServer, client_module

client_module("redis", "redis")

ROOT = Path(__file__).resolve().parents[2]


def event(n: int) -> TrackEvent:
    return TrackEvent(eventName="Bought", id=f"ev-{n}", createdAt=1_700_000_000, email=f"{n}@x.io")


def letters(count: int, kind: FailureKind, start: int = 0) -> list[DeadLetter]:
    failure = Failure(kind, "refused")
    return [
        make_letter("test", Endpoint.TRACK_BULK, event(n), failure, 3)
        for n in range(start, start + count)
    ]


async def stored(sink: RedisDeadLetters) -> list[DeadLetter]:
    return [s.letter async for s in sink.read() if isinstance(s.letter, DeadLetter)]


async def test_every_node_writes_under_one_cap(redis_server: RedisServer) -> None:
    async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
        first = RedisDeadLetters(one, "test", max_bytes=100)
        second = RedisDeadLetters(two, "test", max_bytes=100)
        # Into an empty stream the first letter goes whatever its size (about 250 bytes).
        assert await first.write(letters(2, FailureKind.USER_NOT_FOUND)) == 1
        assert first.at_cap and first.size() > 100
        with pytest.raises(DeadLetterCapReached):
            await second.write(letters(1, FailureKind.USER_NOT_FOUND, start=5))
        assert second.at_cap and second.size() == first.size()

        # A purge makes room for everyone.
        await second.take(lambda s: True)
        assert second.size() == 0 and not second.at_cap
        assert await first.refresh() == 0
        unlimited = RedisDeadLetters(one, "test", max_bytes=None)
        assert await unlimited.write(letters(3, FailureKind.RETRIES_EXHAUSTED)) == 3
        assert [letter.item["id"] for letter in await stored(first)] == ["ev-0", "ev-1", "ev-2"]


def queued(n: int) -> Queued:
    item = event(n)
    return Queued(user=f"u{n}", endpoint=Endpoint.TRACK_BULK, item=item, encoded=b"{}", seq=n)


async def test_a_letter_is_settled_only_once_redis_has_it(redis_server: RedisServer) -> None:
    acks: list[int] = []
    stats = DeliveryStats()
    async with redis_client(redis_server.url, timeout=0.5) as client:
        sink = RedisDeadLetters(client, "test", max_bytes=1_000_000)
        settlement = Settlement("test", stats, sink, lambda seq, n: acks.append(seq))
        try:
            settlement.dead([(queued(1), Failure(FailureKind.USER_NOT_FOUND, "gone"))])
            deadline = time.monotonic() + 5
            while not acks and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert acks == [1] and not settlement.unwritten

            await redis_server.stop()
            settlement.dead([(queued(2), Failure(FailureKind.USER_NOT_FOUND, "gone"))])
            deadline = time.monotonic() + 5
            while not stats.dead_letters_unwritten and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # Redis refused: kept, unacknowledged, and said.
            assert stats.dead_letters_unwritten == 1 and acks == [1]
            assert "cannot write dead letters" in (stats.last_error or "")
            settlement.dead([(queued(3), Failure(FailureKind.USER_NOT_FOUND, "gone"))])
            assert len(settlement.unwritten) == 2

            await redis_server.start()
            deadline = time.monotonic() + 10
            while len(acks) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sorted(acks) == [1, 2, 3] and not settlement.unwritten
            assert stats.dead_letters_unwritten == 0
            assert [letter.item["id"] for letter in await stored(sink)] == ["ev-1", "ev-2", "ev-3"]
            assert stats.dead[FailureKind.USER_NOT_FOUND] == 3
        finally:
            settlement.close()


def cluster_config(tmp_path: Path, redis_url: str) -> Path:
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
node = "cli-test"

[[syncs]]
name = "test"
api_key = "iterable-secret-key-0123456789"
"""
    )
    return path


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
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
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_reads_and_purges_what_a_node_wrote_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config = cluster_config(tmp_path, redis_server.url)
    async with redis_client(redis_server.url) as client:
        node = RedisDeadLetters(client, "test", max_bytes=None, prefix=DEFAULT_PREFIX)
        await node.write(letters(3, FailureKind.USER_NOT_FOUND))
        await node.write(letters(2, FailureKind.RETRIES_EXHAUSTED, start=3))
        # A sync a reload removed: its letters are still listed.
        removed = RedisDeadLetters(client, "old", max_bytes=None, prefix=DEFAULT_PREFIX)
        await removed.write(letters(1, FailureKind.SYNC_REMOVED, start=9))

    # kill -9: the append-only file keeps what was written.
    redis_server.kill()
    await redis_server.start()

    code, out, err = await cli(config, "list", "--json")
    assert code == 0, err
    summaries = {row["sync"]: row for row in map(json.loads, out.splitlines())}
    assert summaries["test"]["by_kind"] == {"user_not_found": 3, "retries_exhausted": 2}
    assert summaries["old"]["total"] == 1

    code, out, err = await cli(config, "show", "--sync", "test", "--json")
    assert code == 0, err
    shown = [json.loads(line) for line in out.splitlines()]
    assert [row["item"]["id"] for row in shown] == [f"ev-{n}" for n in range(5)]

    code, out, err = await cli(config, "show", "--id", shown[4]["id"])
    assert code == 0 and "ev-4" in out and "ev-0" not in out, err

    code, _, err = await cli(config, "purge")
    assert code == 2 and "--all" in err

    code, out, err = await cli(config, "purge", "--reason", "user_not_found", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["total"] == 3
    code, out, err = await cli(config, "list", "--sync", "test", "--json")
    assert json.loads(out)["by_kind"] == {"retries_exhausted": 2}

    async with redis_client(redis_server.url) as client:
        # The byte counter follows: what is left is what the cap counts.
        left = RedisDeadLetters(client, "test", max_bytes=None)
        lengths = [len(s.line) - 1 async for s in left.read()]
        assert len(lengths) == 2 and await left.refresh() == sum(lengths)

    # Replay works in cluster mode (tests/cluster/test_replay.py), but only for a sync
    # the config still has: a removed one's letters have nowhere to go.
    code, _, err = await cli(config, "replay", "--sync", "old")
    assert code == 2 and "no sync named 'old'" in err

    await redis_server.stop()
    code, _, err = await cli(config, "list")
    assert code == 1 and "Redis" in err
