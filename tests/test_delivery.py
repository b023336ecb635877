"""Delivery end to end on real sockets: daemon app -> simulated Iterable.

Rates and caps are scaled down so each scenario runs in seconds; the invariants are
the production ones: no request over a cap, no window over a rate, zero 429s from
Iterable, every accepted event delivered once per id, order per user.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from forwarder.deliver.replay import replay
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import dead_letter_path, read_letters
from tests.harness import (
    ITERABLE_KEY,
    Daemon,
    eventually,
    iterable_id,
    make_config,
    post_events,
    serve,
)


class Iterable:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.state = SimulatorState()
        self.url = ""

    async def __aenter__(self) -> Iterable:
        self.runner, self.url = await serve(build_simulator_app(self.config, self.state))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def identify(user: int, domain: str = "example.com") -> dict[str, Any]:
    return {
        "event_type": "$identify",
        "user_id": f"user-{user:05d}",
        "user_properties": {"$set": {"email": f"u{user}@{domain}", "plan": "pro"}},
    }


def event(user: int, n: int) -> dict[str, Any]:
    return {
        "event_type": "Purchase",
        "user_id": f"user-{user:05d}",
        "insert_id": f"ev-{user}-{n}",
        "time": 1_700_000_000_000 + n,
        "event_properties": {"price": n, "sku": "A", "seq": n},
    }


def limits(rate: float, items: int, request_bytes: int = 4_000_000) -> dict[str, Any]:
    return {
        "track_bulk_per_second": rate,
        "bulk_update_per_second": rate,
        "max_events_per_request": items,
        "max_users_per_request": items,
        "max_request_bytes": request_bytes,
    }


async def test_burst_of_ten_times_capacity_respects_every_cap(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    rate, cap, cap_bytes = 20, 50, 12_000
    sim_config = SimulatorConfig(
        api_keys=frozenset({ITERABLE_KEY}),
        track_bulk_per_second=rate,
        bulk_update_per_second=rate,
        max_events_per_request=cap,
        max_users_per_request=cap,
        max_request_bytes=cap_bytes,
    )
    async with Iterable(sim_config) as iterable:
        config = make_config(tmp_path, iterable.url, limits=limits(rate, cap, cap_bytes))
        daemon = await Daemon(config).start()
        users = 250
        # Iterable absorbs rate x cap = 1,000 events/s; offer 10,000 in one burst.
        status, _ = await post_events(session, daemon.url, [identify(u) for u in range(users)])
        assert status == 200
        bodies = [[event(u, n) for u in range(users)] for n in range(40)]
        answers = await asyncio.gather(*(post_events(session, daemon.url, b) for b in bodies))
        assert all(status == 200 for status, _ in answers)
        total = users * len(bodies)
        await eventually(lambda: len(iterable.state.event_ids) >= total, timeout=60)
        assert await daemon.drain_and_stop()
    stats = iterable.state.stats()
    assert stats["rate_limited"] == 0
    assert all(n <= rate for n in stats["max_requests_in_one_second"].values())
    assert all(n <= cap for n in stats["max_items_in_one_request"].values())
    assert all(n <= cap_bytes for n in stats["max_bytes_in_one_request"].values())
    assert len(iterable.state.events) == total == len(iterable.state.event_ids)
    # Batches were filled, not trickled: the linger and the backlog pack them.
    track = [r for r in iterable.state.requests if r.endpoint == "events/trackBulk"]
    assert sum(r.items for r in track) / len(track) > cap * 0.8


async def test_injected_server_errors_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim_config = SimulatorConfig(
        track_bulk_per_second=200, bulk_update_per_second=200, error_rate=0.1, seed=3
    )
    async with Iterable(sim_config) as iterable:
        config = make_config(tmp_path, iterable.url, limits=limits(200, 40))
        daemon = await Daemon(config).start()
        await post_events(session, daemon.url, [identify(u) for u in range(100)])
        for n in range(20):
            status, _ = await post_events(session, daemon.url, [event(u, n) for u in range(100)])
            assert status == 200
        await eventually(lambda: len(iterable.state.event_ids) >= 2000, timeout=60)
        assert await daemon.drain_and_stop()
        delivery = daemon.pipeline.deliveries[0]
        assert sum(delivery.stats.retries.values()) > 0
        assert not delivery.stats.dead
    errors = sum(n for (_, status), n in iterable.state.statuses.items() if status == 500)
    assert errors > 0
    assert len(iterable.state.events) == 2000 == len(iterable.state.event_ids)


async def test_iterable_down_turns_into_429s_then_everything_arrives(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim_config = SimulatorConfig(track_bulk_per_second=100, bulk_update_per_second=100)
    async with Iterable(sim_config) as iterable:
        config = make_config(
            tmp_path,
            iterable.url,
            limits=limits(100, 100),
            delivery={
                "max_queued_items": 600,
                "max_retry_seconds": 120,
                "max_attempts": 1000,
                "backoff_max_seconds": 1.0,
            },
        )
        daemon = await Daemon(config).start()
        await post_events(session, daemon.url, [identify(u) for u in range(50)])
        await eventually(lambda: len(iterable.state.users) >= 50)
        async with session.post(f"{iterable.url}/_sim/faults", json={"down_for_seconds": 30}) as r:
            assert r.status == 200
        accepted: list[str] = []
        throttled = 0
        for n in range(100):  # bounded: 100 requests of 50 events
            batch = [event(u, n) for u in range(50)]
            status, body = await post_events(session, daemon.url, batch)
            if status == 200:
                accepted.extend(iterable_id(e) for e in batch)
            else:
                assert status == 429 and body["throttled_events"] == list(range(50))
                throttled += 1
                if throttled >= 5:
                    break
        assert throttled >= 5, "queues never filled"
        queue = daemon.pipeline.deliveries[0].lanes
        assert queue.items <= 600 + 100  # bounded by the cap plus one request's items
        await eventually(lambda: set(accepted) <= iterable.state.event_ids, timeout=90)
        assert await daemon.drain_and_stop()
    assert iterable.state.rate_limited == 0


async def test_partial_failures_are_dead_lettered_and_replayed(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim_config = SimulatorConfig(track_bulk_per_second=100, bulk_update_per_second=100)
    async with Iterable(sim_config) as iterable:
        config = make_config(
            tmp_path, iterable.url, limits=limits(100, 100), delivery={"max_attempts": 2}
        )
        daemon = await Daemon(config).start()
        good = [identify(u) for u in range(5)]
        bad = [identify(u, domain="invalid.test") for u in range(5, 8)]
        await post_events(session, daemon.url, good + bad)
        await post_events(session, daemon.url, [event(u, 0) for u in range(8)])
        await eventually(lambda: len(iterable.state.event_ids) >= 5)
        # Now Iterable fails: these end as dead letters after their attempts.
        async with session.post(f"{iterable.url}/_sim/faults", json={"error_rate": 1.0}) as r:
            assert r.status == 200
        await post_events(session, daemon.url, [event(u, 1) for u in range(3)])
        assert await daemon.drain_and_stop()

    path = dead_letter_path(config.storage.path, "test")
    letters = [letter for letter in read_letters(path) if not isinstance(letter, str)]
    reasons = defaultdict(list)
    for letter in letters:
        reasons[letter.reason.split(":")[0]].append(letter)
    assert {l.item["email"] for l in reasons["invalidEmails"]} >= {
        f"u{u}@invalid.test" for u in (5, 6, 7)
    }
    exhausted = [l for l in letters if l.kind == "retries_exhausted"]
    assert {l.item["id"] for l in exhausted} == {iterable_id(event(u, 1)) for u in range(3)}
    assert all(l.attempts == 2 for l in exhausted)

    # Iterable is healthy again: a replay delivers the retryable ones; the invalid
    # emails fail again and go back to the dead letters with their reason.
    async with Iterable(
        SimulatorConfig(track_bulk_per_second=100, bulk_update_per_second=100)
    ) as healthy:
        replay_config = make_config(tmp_path, healthy.url, limits=limits(100, 100))
        (result,) = await replay(replay_config, timeout=30)
        assert {iterable_id(event(u, 1)) for u in range(3)} <= healthy.state.event_ids
    assert result.resent == len(letters)
    assert result.delivered >= 3
    again = [l for l in read_letters(path) if not isinstance(l, str)]
    assert all("invalid" in l.reason for l in again)


async def test_order_per_user_and_user_before_events_with_many_requests_in_flight(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Iterable refuses events of users it does not know yet, and answers slowly, so
    # several requests overlap; small batches make many of them.
    sim_config = SimulatorConfig(
        track_bulk_per_second=500,
        bulk_update_per_second=500,
        require_user_first=True,
        latency_ms=15,
    )
    async with Iterable(sim_config) as iterable:
        config = make_config(
            tmp_path,
            iterable.url,
            limits=limits(500, 7),
            delivery={"max_in_flight": 6, "linger_ms": 5, "max_attempts": 2},
        )
        daemon = await Daemon(config).start()
        users = 30
        for n in range(10):
            batch: list[dict[str, Any]] = []
            for u in range(users):
                if n == 0:
                    batch.append(identify(u))
                batch.append(event(u, n))
                if n == 5:  # a change of a selected property: an update mid-stream
                    batch.append({**identify(u), "user_properties": {"$set": {"plan": f"p{n}"}}})
            status, _ = await post_events(session, daemon.url, batch)
            assert status == 200
        await eventually(lambda: len(iterable.state.event_ids) >= users * 10, timeout=30)
        assert await daemon.drain_and_stop()
        delivery = daemon.pipeline.deliveries[0]
        assert not delivery.stats.dead, delivery.stats.dead
        assert delivery.stats.retries["events/trackBulk"] == 0  # never sent before its user
    in_flight_peak = max_overlap(iterable.state.requests, 0.015)
    assert in_flight_peak >= 2
    per_user: dict[str, list[int]] = defaultdict(list)
    for received in iterable.state.events:
        per_user[received["email"]].append(received["dataFields"]["price"])
    assert len(per_user) == users
    assert all(seqs == sorted(seqs) and len(seqs) == 10 for seqs in per_user.values())


def max_overlap(requests: list[Any], latency: float) -> int:
    """Most requests whose [arrival, arrival + latency) intervals overlap."""
    times = sorted(r.at for r in requests)
    best = 0
    start = 0
    for end, at in enumerate(times):
        while times[start] <= at - latency:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_bad_api_key_pauses_the_sync_and_keeps_its_items(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim_config = SimulatorConfig(api_keys=frozenset({"the-right-key"}), track_bulk_per_second=100)
    async with Iterable(sim_config) as iterable:
        config = make_config(tmp_path, iterable.url, limits=limits(100, 100))
        daemon = await Daemon(config).start()
        await post_events(session, daemon.url, [identify(1), event(1, 0), event(1, 1)])
        delivery = daemon.pipeline.deliveries[0]
        await eventually(lambda: delivery.pause.reason is not None)
        assert "API key" in delivery.pause.reason
        assert delivery.lanes.items >= 1 and not delivery.stats.dead
        async with session.get(f"{daemon.admin_url}/status") as response:
            status = await response.json()
        assert status["syncs"][0]["state"] == "paused"
        # The operator fixes the key on Iterable's side: the sync resumes by itself.
        iterable.config.api_keys = frozenset({ITERABLE_KEY})
        sent = {iterable_id(event(1, 0)), iterable_id(event(1, 1))}
        await eventually(lambda: sent <= iterable.state.event_ids)
        assert delivery.pause.reason is None
        assert await daemon.drain_and_stop()
