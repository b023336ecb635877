"""Iterable outages end to end: a stopped Iterable and a 5xx storm hold data, never lose it.

Each test runs the daemon in this process against the simulator on real sockets, under a
steady trickle of events, for as long as the issue's outage lasted (90 s and 60 s): every
event answered 200 arrives once Iterable is back, no dead letter is written, and the sync
paused during the outage and resumed after it. Everything else is scaled down to seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from forwarder.deliver.sync import SyncDelivery
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import dead_letter_path, read_letters
from tests.harness import Daemon, eventually, iterable_id, make_config, post_events

USERS = 20
# Retries and probes scaled down so the outage's edges take seconds; the bounds that
# decide whether an outage ends in dead letters are the defaults (no attempt bound, 6 h).
DELIVERY: dict[str, Any] = {
    "linger_ms": 20,
    "backoff_initial_seconds": 0.05,
    "backoff_max_seconds": 1.0,
    "max_attempts": 0,
    "max_retry_seconds": 21_600,
    "outage_pause_after_failures": 5,
    "outage_pause_after_seconds": 2,
    "outage_probe_seconds": 0.5,
    "outage_probe_max_seconds": 2.0,
    "request_timeout_seconds": 5,
}
LIMITS = {
    "track_bulk_per_second": 100,
    "bulk_update_per_second": 100,
    "max_events_per_request": 100,
    "max_users_per_request": 100,
}


@dataclass
class Simulator:
    """The simulated Iterable on one fixed port, which can be stopped and started again."""

    config: SimulatorConfig
    state: SimulatorState = field(default_factory=SimulatorState)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(
            build_simulator_app(self.config, self.state), access_log=None, shutdown_timeout=1.0
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def identify(user: int) -> dict[str, Any]:
    return {
        "event_type": "$identify",
        "user_id": f"user-{user:03d}",
        "user_properties": {"$set": {"email": f"u{user}@example.com", "plan": "pro"}},
    }


def event(user: int, n: int) -> dict[str, Any]:
    return {
        "event_type": "Purchase",
        "user_id": f"user-{user:03d}",
        "insert_id": f"ev-{user}-{n}",
        "time": 1_700_000_000_000 + n,
        "event_properties": {"price": n, "sku": "A"},
    }


@dataclass
class Trickle:
    """A steady trickle of events into the daemon: the ids it answered 200, and the rest."""

    session: aiohttp.ClientSession
    url: str
    every: float = 0.25
    accepted: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, max_posts: int) -> None:
        for n in range(max_posts):  # bounded in count; the test stops it sooner
            if self.stop.is_set():
                return
            batch = [event(u, n) for u in range(n % 4, USERS, 4)]
            status, _ = await post_events(self.session, self.url, batch)
            if status == 200:
                self.accepted.extend(iterable_id(e) for e in batch)
            else:
                self.refused.append(status)
            try:
                await asyncio.wait_for(self.stop.wait(), self.every)
            except TimeoutError:
                pass


@dataclass
class Watch:
    """What the sync went through during the outage, sampled from the outside."""

    paused_kinds: set[str] = field(default_factory=set)
    status_reasons: list[str] = field(default_factory=list)
    metric_paused: bool = False


async def look_while_paused(
    delivery: SyncDelivery, session: aiohttp.ClientSession, daemon_url: str, watch: Watch
) -> None:
    """Wait for the outage pause, then read it where an operator would: /status, /metrics."""
    await eventually(lambda: delivery.pause.kind == "outage", timeout=30, every=0.05)
    watch.paused_kinds.add("outage")
    async with session.get(f"{daemon_url}/status") as response:
        sync = (await response.json())["syncs"][0]
    assert sync["state"] == "paused"
    watch.status_reasons.append(sync["paused_reason"])
    async with session.get(f"{daemon_url}/metrics") as response:
        metrics = await response.text()
    watch.metric_paused = 'forwarder_sync_paused{sync="test"} 1.0' in metrics


async def outage_run(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    begin: Any,
    end: Any,
    seconds: float,
) -> tuple[Watch, Trickle, SyncDelivery, Simulator, int]:
    """Trickle events, hold an outage for `seconds` (begin/end make it), then catch up."""
    caplog.set_level(logging.WARNING, logger="forwarder.sender")
    simulator = Simulator(SimulatorConfig(track_bulk_per_second=100, bulk_update_per_second=100))
    await simulator.start()
    config = make_config(
        tmp_path, simulator.url, durability="journal", limits=LIMITS, delivery=DELIVERY
    )
    daemon = await Daemon(config).start()
    watch = Watch()
    try:
        async with aiohttp.ClientSession() as session:
            status, _ = await post_events(session, daemon.url, [identify(u) for u in range(USERS)])
            assert status == 200
            await eventually(lambda: len(simulator.state.users) >= USERS)
            delivery = daemon.pipeline.deliveries[0]

            trickle = Trickle(session, daemon.url)
            posts = int((seconds + 60) / trickle.every)
            trickling = asyncio.create_task(trickle.run(max_posts=posts))
            try:
                await eventually(lambda: len(simulator.state.event_ids) >= 10)
                requests_before = sum(delivery.stats.requests.values())
                await begin(simulator, session)
                started = time.monotonic()
                await look_while_paused(delivery, session, daemon.admin_url, watch)
                # Hold the outage for its whole length; the trickle goes on meanwhile.
                await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
                requests_during = sum(delivery.stats.requests.values()) - requests_before
                assert delivery.pause.reason is not None, "the outage pause held"
                assert not delivery.stats.dead, delivery.stats.dead
                await end(simulator, session)
                await asyncio.sleep(2.0)  # a little trickle after recovery too
            finally:
                trickle.stop.set()
                await asyncio.wait_for(trickling, 10)
            accepted = set(trickle.accepted)
            await eventually(lambda: accepted <= simulator.state.event_ids, timeout=60)
            assert delivery.pause.reason is None, "the first answer resumed the sync"
        assert await daemon.drain_and_stop()
    finally:
        await simulator.stop()
    return watch, trickle, delivery, simulator, requests_during


def assert_held_and_delivered(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    watch: Watch,
    trickle: Trickle,
    delivery: SyncDelivery,
    simulator: Simulator,
) -> None:
    assert not trickle.refused, trickle.refused  # the queue never filled: all answered 200
    assert len(trickle.accepted) >= 200
    assert set(trickle.accepted) <= simulator.state.event_ids
    assert not delivery.stats.dead
    letters = dead_letter_path(str(tmp_path / "var"), "test")
    assert not letters.exists() or not list(read_letters(letters))
    assert watch.paused_kinds == {"outage"} and watch.metric_paused
    messages = [record.getMessage() for record in caplog.records]
    assert any("sync paused after" in m for m in messages)
    assert any("sync resumed after" in m for m in messages)


async def test_a_90_second_outage_with_iterable_unreachable_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def stop(simulator: Simulator, session: aiohttp.ClientSession) -> None:
        await simulator.stop()  # connection refused from now on

    async def start(simulator: Simulator, session: aiohttp.ClientSession) -> None:
        await simulator.start()  # the same port

    watch, trickle, delivery, simulator, during = await outage_run(
        tmp_path, caplog, stop, start, seconds=90
    )
    assert_held_and_delivered(tmp_path, caplog, watch, trickle, delivery, simulator)
    (reason,) = watch.status_reasons
    assert "Iterable unreachable or failing" in reason and "Error" in reason
    # Paused, the sync sent one probe per interval (<= 2 s), not retries of every batch.
    assert during <= 150, during


async def test_a_60_second_storm_of_5xx_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def storm(simulator: Simulator, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{simulator.url}/_sim/faults", json={"error_rate": 1.0}) as r:
            assert r.status == 200

    async def calm(simulator: Simulator, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{simulator.url}/_sim/faults", json={"error_rate": 0.0}) as r:
            assert r.status == 200

    watch, trickle, delivery, simulator, during = await outage_run(
        tmp_path, caplog, storm, calm, seconds=60
    )
    assert_held_and_delivered(tmp_path, caplog, watch, trickle, delivery, simulator)
    (reason,) = watch.status_reasons
    assert "500 GenericError" in reason
    errors = sum(n for (_, status), n in simulator.state.statuses.items() if status == 500)
    assert errors >= 5 and during <= 150, (errors, during)
    # Delivered once each: a resend of an event id would show as a second request of it.
    assert len(simulator.state.events) == len(simulator.state.event_ids)
