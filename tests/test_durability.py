"""A 200 means delivered or dead-lettered, even across kill -9: the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.harness import (
    AMPLITUDE_KEY,
    Daemon,
    eventually,
    iterable_id,
    make_config,
    post_events,
    serve,
)
from tests.processes import DaemonProcess, free_port, listen_lines


def write_config(tmp_path: Path, port: int, sim_url: str, **extra: str) -> Path:
    storage = extra.get("storage", "")
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
{listen_lines(port)}
api_keys = ["{AMPLITUDE_KEY}"]
drain_timeout_seconds = {extra.get("drain", "15")}

[storage]
path = "{tmp_path / "var"}"
durability = "journal"
{storage}

[[syncs]]
name = "test"
api_key = "${{ITERABLE_KEY}}"
base_url = "{sim_url}"

[syncs.events]
event_properties = ["n"]

[syncs.limits]
track_bulk_per_second = {extra.get("rate", "5")}
bulk_update_per_second = 50
max_events_per_request = 100

[syncs.delivery]
linger_ms = 20
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
max_attempts = 1000
"""
    )
    return path


def batch(start: int, size: int = 50) -> list[dict[str, Any]]:
    return [
        {
            "event_type": "Tick",
            "user_id": f"user-{n % 40:05d}",
            "insert_id": f"tick-{n}",
            "event_properties": {"n": n},
            "user_properties": {"$set": {"email": f"u{n % 40}@example.com"}},
        }
        for n in range(start, start + size)
    ]


async def test_kill_9_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    state = SimulatorState()
    # Iterable takes 5 requests/s of up to 100 events: far slower than we post, so a
    # backlog sits in the daemon when it is killed.
    runner, sim_url = await serve(
        build_simulator_app(SimulatorConfig(track_bulk_per_second=5), state)
    )
    port = free_port()
    config = write_config(tmp_path, port, sim_url)
    acknowledged: set[str] = set()
    try:
        daemon = await DaemonProcess(config, port).start()
        async with aiohttp.ClientSession() as session:

            async def client(offset: int) -> None:
                for k in range(40):  # bounded; the kill usually lands first
                    events = batch(offset + k * 50)
                    try:
                        status, _ = await post_events(session, daemon.url, events)
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        return
                    if status == 200:
                        acknowledged.update(iterable_id(e) for e in events)

            clients = [asyncio.create_task(client(c * 100_000)) for c in range(4)]
            await eventually(lambda: len(acknowledged) >= 2000, timeout=30)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGKILL)  # mid-stream, backlog queued
            await asyncio.gather(*clients)
            assert await daemon.wait(10) == -signal.SIGKILL
            delivered_before_restart = len(state.event_ids)
            assert delivered_before_restart < len(acknowledged), "no backlog at the kill"

            restarted = await DaemonProcess(config, port).start()
            await eventually(lambda: acknowledged <= state.event_ids, timeout=60)
            assert restarted.process is not None
            restarted.process.send_signal(signal.SIGTERM)
            assert await restarted.wait(30) == 0
    finally:
        await runner.cleanup()
    received = [e["id"] for e in state.events]
    # Nothing acknowledged is missing; what came twice came with the same id, and
    # nothing arrived that was never acknowledged... except requests cut by the kill.
    assert acknowledged <= set(received)
    assert len(received) - len(set(received)) <= len(acknowledged)


async def test_sigterm_drains_exits_0_and_sends_nothing_twice(tmp_path: Path) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(
        build_simulator_app(SimulatorConfig(track_bulk_per_second=20), state)
    )
    port = free_port()
    config = write_config(tmp_path, port, sim_url, rate="20")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    try:
        daemon = await DaemonProcess(config, port, env={"NOTIFY_SOCKET": str(notify_path)}).start()
        sent: set[str] = set()
        async with aiohttp.ClientSession() as session:
            for k in range(20):
                events = batch(k * 50)
                status, _ = await post_events(session, daemon.url, events)
                assert status == 200
                sent.update(iterable_id(e) for e in events)
        assert daemon.process is not None
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait(20) == 0
        assert time.monotonic() - started < 15 + 5
        assert sent <= state.event_ids
        received = [e["id"] for e in state.events]
        assert len(received) == len(set(received)) == len(sent)

        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert "READY=1" in messages and "STOPPING=1" in messages
        assert messages.index("READY=1") < messages.index("STOPPING=1")

        # A restart replays nothing: everything was checkpointed on the way out.
        again = await DaemonProcess(config, port).start()
        await asyncio.sleep(0.5)
        assert again.process is not None
        again.process.send_signal(signal.SIGTERM)
        assert await again.wait(20) == 0
        assert len(state.events) == len(sent)
        assert "iterable-secret-key-0123456789" not in daemon.output() + again.output()
    finally:
        notify.close()
        await runner.cleanup()


async def test_torn_journal_tail_keeps_the_records_before_it(tmp_path: Path) -> None:
    state = SimulatorState()
    sim_config = SimulatorConfig(down_until=time.monotonic() + 3600)  # holds everything back
    runner, sim_url = await serve(build_simulator_app(sim_config, state))
    config = make_config(tmp_path, sim_url, durability="journal")
    try:
        async with aiohttp.ClientSession() as session:
            daemon = await Daemon(config).start()
            for k in range(5):
                status, _ = await post_events(session, daemon.url, batch(k * 10, 10))
                assert status == 200
            await daemon.crash()
            segments = sorted((tmp_path / "var" / "journal").glob("segment-*.log"))
            data = segments[-1].read_bytes()
            segments[-1].write_bytes(data[:-5])  # the last record's write was torn

            sim_config.down_until = 0.0
            again = await Daemon(config).start()
            await eventually(lambda: len(state.event_ids) >= 40)
            async with session.get(again.admin_url + "/status") as response:
                status_body = await response.json()
            assert status_body["journal"]["recovery_problems"]
            assert await again.drain_and_stop()
    finally:
        await runner.cleanup()
    assert state.event_ids == {iterable_id(e) for e in batch(0, 40)}


async def test_journal_disk_cap_answers_429_not_a_crash(tmp_path: Path) -> None:
    sim_config = SimulatorConfig(down_until=time.monotonic() + 3600)
    runner, sim_url = await serve(build_simulator_app(sim_config))
    config = make_config(tmp_path, sim_url, durability="journal")
    config.storage.journal_max_bytes = 20_000
    try:
        async with aiohttp.ClientSession() as session:
            daemon = await Daemon(config).start()
            statuses = []
            for k in range(30):
                status, body = await post_events(session, daemon.url, batch(k * 50))
                statuses.append(status)
                if status == 429:
                    assert "Journal" in body["error"]
                    assert body["throttled_events"] == list(range(50))
            assert statuses[0] == 200 and 429 in statuses
            async with session.get(daemon.url + "/healthz") as response:
                assert response.status == 200
            await daemon.crash()
    finally:
        await runner.cleanup()
