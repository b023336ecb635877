"""The shared rate budget on a real Redis: nodes together never pass the rate, and use it."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from forwarder.cluster.errors import RateBudgetUnavailable
from forwarder.cluster.rate import (
    DEFAULT_PREFIX,
    budget_keys,
    late_tolerance,
    rule_for,
    rules_of,
)
from forwarder.deliver.rate import ReportedStamp
from forwarder.iterable import Endpoint
from tests.cluster.rate_load import (
    ENDPOINT,
    acquire_until,
    budget_for,
    most_in_a_window,
    sync_at,
    tightest_span,
)
from tests.cluster.servers import RedisServer, client_module
from tests.harness import eventually
from tests.processes import ROOT

client_module("redis.asyncio", "redis")

KEY = "iterable-secret-key-0123456789abcdef"
RATE = 10.0
HEADROOM = 0.05  # the shipped default of delivery.rate_headroom
SECONDS = 6.0
# Several senders per node: a node with a backlog has many batches waiting for a slot.
TASKS = 3


def test_rule_paces_with_the_headroom_and_caps_each_second() -> None:
    rule = rule_for(RATE, HEADROOM)
    assert (rule.interval, rule.limit, rule.window) == (105_000, 10, 1_000_000)
    # Ten slots span the second and the headroom: 50 ms for a node that sends late.
    assert rule.limit * rule.interval == 1_050_000
    assert rule_for(RATE, 0.0).interval == 100_000
    assert rule_for(2.5, HEADROOM).limit == 2
    assert rule_for(0.5, 0.0).limit == 1


def test_a_send_may_wake_late_by_half_the_headrooms_slack() -> None:
    assert late_tolerance(rule_for(RATE, HEADROOM)) == pytest.approx(0.025)
    assert late_tolerance(rule_for(RATE, 0.0)) == 0.0
    # Below one request a second the only slot has the window's whole rest as slack.
    assert late_tolerance(rule_for(0.5, 0.0)) == pytest.approx(0.5)


def test_syncs_on_one_key_share_the_lowest_rate_and_widest_headroom() -> None:
    rules = rules_of([sync_at(KEY, 10, 0.05), sync_at(KEY, 4, 0.1), sync_at("other", 20, 0)])
    assert rules[(KEY, Endpoint.TRACK_BULK)] == rule_for(4, 0.1)
    assert rules[("other", Endpoint.TRACK_BULK)] == rule_for(20, 0)


def test_the_key_is_named_by_a_digest_in_one_cluster_slot() -> None:
    tat, log = budget_keys(DEFAULT_PREFIX, KEY, ENDPOINT)
    assert KEY not in tat + log and "0123456789" not in tat + log
    tag = tat[tat.index("{") : tat.index("}") + 1]
    assert tag in log and tag.endswith(":events/trackBulk}")
    assert budget_keys(DEFAULT_PREFIX, KEY, Endpoint.BULK_UPDATE)[0] != tat


async def test_slots_are_reserved_one_interval_apart_and_keys_are_separate(
    redis_server: RedisServer,
) -> None:
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    budget.configure([sync_at(KEY, RATE, HEADROOM), sync_at("another-key-xyz", RATE, HEADROOM)])
    try:
        assert await budget.reserve(KEY, ENDPOINT) == 0.0
        # Asked at once: one interval (0.105 s) on, then two, less the time in between.
        assert 0.05 < await budget.reserve(KEY, ENDPOINT) <= 0.105
        assert 0.105 < await budget.reserve(KEY, ENDPOINT) <= 0.21
        assert await budget.reserve(KEY, Endpoint.BULK_UPDATE) == 0.0
        assert await budget.reserve("another-key-xyz", ENDPOINT) == 0.0
        # Nothing Redis holds names the key: not the key names, not the values.
        names = [name async for name in client.scan_iter()]
        assert len(names) == 6
        for name in names:
            assert b"secret" not in name and b"another" not in name
            value = await client.dump(name)
            assert value is not None and b"secret" not in value
    finally:
        await client.aclose()


async def _node_process(url: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cluster.rate_node",
        url,
        KEY,
        str(RATE),
        str(HEADROOM),
        str(TASKS),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line == b"ready\n", line
    return process


async def test_three_nodes_share_one_budget(redis_server: RedisServer) -> None:
    """Two nodes in this process (each its own Redis client) and one in a subprocess."""
    nodes = [budget_for(redis_server.url, KEY, RATE, HEADROOM) for _ in range(2)]
    process = await _node_process(redis_server.url)
    try:
        start = time.monotonic() + 0.5
        end = start + SECONDS
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{start} {end}\n".encode())
        await process.stdin.drain()
        here = await asyncio.gather(
            *(acquire_until(budget, KEY, start, end, TASKS) for budget, _ in nodes)
        )
        there = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for _, client in nodes:
            await client.aclose()
    times = [*here[0], *here[1], *there]
    counts = [len(here[0]), len(here[1]), len(there)]
    most = most_in_a_window(times)
    used = len(times) / (RATE * SECONDS)
    span = tightest_span(times, int(RATE))
    figures = f"three nodes: {counts} acquisitions, at most {most} in a second, {used:.1%} used; "
    figures += f"the closest 11 acquisitions spanned {span:.3f} s"
    print("\n" + figures)
    assert most <= RATE, figures
    assert used >= 0.9, figures
    # Nodes take turns: each gets at least half of its even share (a third).
    assert min(counts) >= len(times) / 6, figures


async def test_one_node_alone_can_use_the_whole_budget(redis_server: RedisServer) -> None:
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        start = time.monotonic() + 0.1
        times = await acquire_until(budget, KEY, start, start + SECONDS, TASKS)
    finally:
        await client.aclose()
    most = most_in_a_window(times)
    used = len(times) / (RATE * SECONDS)
    span = tightest_span(times, int(RATE))
    figures = f"one node: {len(times)} acquisitions, at most {most} in a second, {used:.1%} used; "
    figures += f"the closest 11 acquisitions spanned {span:.3f} s"
    print("\n" + figures)
    assert most <= RATE, figures
    assert used >= 0.9, figures


async def test_redis_down_is_a_typed_error_and_the_budget_recovers(
    redis_server: RedisServer,
) -> None:
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        await budget.acquire(KEY, ENDPOINT)
        await redis_server.stop()
        asked = time.monotonic()
        with pytest.raises(RateBudgetUnavailable) as raised:
            await asyncio.wait_for(budget.acquire(KEY, ENDPOINT), 30)
        assert KEY not in str(raised.value)
        print(f"\nRedis down: RateBudgetUnavailable after {time.monotonic() - asked:.2f} s")
        # A fresh Redis knows no scripts: the client loads it again, unseen by the caller.
        await redis_server.start()
        stamp = await asyncio.wait_for(budget.acquire(KEY, ENDPOINT), 30)
        assert isinstance(stamp, list) and len(stamp) == 1
    finally:
        await client.aclose()


async def test_a_clock_far_ahead_of_redis_is_forgotten(redis_server: RedisServer) -> None:
    """A schedule further ahead than any rule reaches means Redis' clock stepped back: the
    budget starts afresh instead of stalling every node."""
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        tat, _ = budget_keys(DEFAULT_PREFIX, KEY, ENDPOINT)
        seconds, micros = await client.time()
        await client.set(tat, str((seconds + 3600) * 1_000_000 + micros))
        assert await budget.reserve(KEY, ENDPOINT) == 0.0
        assert 0.05 < await budget.reserve(KEY, ENDPOINT) <= 0.105
    finally:
        await client.aclose()


async def test_acquire_hands_out_a_send_stamp(redis_server: RedisServer) -> None:
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        before = time.monotonic()
        stamp = await budget.acquire(KEY, ENDPOINT)
        assert before <= stamp[0] <= time.monotonic()
    finally:
        await client.aclose()


async def test_a_slot_woken_too_late_is_given_up_for_a_later_one(
    redis_server: RedisServer,
) -> None:
    """A loop blocked past the slot (a busy node) must not send on it."""
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        await budget.acquire(KEY, ENDPOINT)  # the next slot is one interval away

        async def block_the_loop() -> None:
            await asyncio.sleep(0.01)
            time.sleep(0.2)  # deliberately blocking: a node whose cores are busy

        blocker = asyncio.create_task(block_the_loop())
        await budget.acquire(KEY, ENDPOINT)
        await blocker
        assert budget.slots_given_up >= 1
    finally:
        await client.aclose()


async def test_a_late_send_is_counted_from_when_it_really_left(
    redis_server: RedisServer,
) -> None:
    """A request that leaves 0.3 s after its slot (a busy node) moves that slot, so the
    slot `limit` places later is a window after the real send, not after the slot."""
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        first = await budget.acquire(KEY, ENDPOINT)
        assert isinstance(first, ReportedStamp)
        first[0] = time.monotonic() + 0.3  # as the HTTP client's tracing does, late
        first.on_sent(first[0])
        await eventually(lambda: budget.late_sends == 1 and not budget.reporting, timeout=5)
        waits = [await budget.reserve(KEY, ENDPOINT) for _ in range(int(RATE))]
        # Nine more slots one interval apart (0.105 ... 0.945 s). Counted at its slot, the
        # late send would let the next one come at 1.05 s (one interval on); counted
        # from 0.3 s it is not the oldest of the ten any more, and the next slot waits
        # for a window after the oldest that is (0.105 + 1.0 s).
        assert waits[8] <= 0.95
        assert waits[9] - waits[8] >= 0.15
    finally:
        await client.aclose()


async def test_a_reload_takes_the_new_rate_and_keeps_the_schedule(
    redis_server: RedisServer,
) -> None:
    budget, client = budget_for(redis_server.url, KEY, RATE, HEADROOM)
    try:
        assert await budget.reserve(KEY, ENDPOINT) == 0.0
        budget.configure([sync_at(KEY, 2.0, HEADROOM)])
        # The next slot was set at the old pace (0.105 s on) and stands.
        assert 0.05 < await budget.reserve(KEY, ENDPOINT) <= 0.105
        # The window counts the slots before the reload: two in this second already, so
        # the next is a second after the first (not 0.525 s after the last: the new pace).
        assert 0.9 < await budget.reserve(KEY, ENDPOINT) <= 1.0
    finally:
        await client.aclose()
