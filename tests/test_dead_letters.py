"""Dead letters an operator can work with, end to end: the CLI, replay through a running
daemon (its rate budget), kill -9 mid-replay, and the dead-letter cap."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from forwarder.deliver.letter_query import purge
from forwarder.deliver.letter_select import LetterFilter
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, TrackEvent
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import (
    DeadLetter,
    DeadLetterFile,
    dead_letter_path,
    make_letter,
    read_letters,
)
from tests.harness import AMPLITUDE_KEY, Daemon, eventually, make_config, post_events, serve
from tests.processes import ROOT, DaemonProcess, free_port, listen_lines

TRACK = Endpoint.TRACK_BULK.value


def write_config(tmp_path: Path, port: int, sim_url: str) -> Path:
    """A journaled daemon with Iterable's trackBulk limit at 5 requests/s of 20 events."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
{listen_lines(port)}
api_keys = ["{AMPLITUDE_KEY}"]
drain_timeout_seconds = 15

[storage]
path = "{tmp_path / "var"}"
durability = "journal"

[[syncs]]
name = "test"
api_key = "${{ITERABLE_KEY}}"
base_url = "{sim_url}"

[syncs.limits]
track_bulk_per_second = 5
bulk_update_per_second = 50
max_events_per_request = 20

[syncs.delivery]
linger_ms = 20
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
max_attempts = 1000
"""
    )
    return path


def letters(count: int, kind: FailureKind = FailureKind.RETRIES_EXHAUSTED) -> list[DeadLetter]:
    made = []
    for n in range(count):
        event = TrackEvent(
            eventName="Replayed",
            id=f"replayed-{n}",
            createdAt=1_600_000_000 + n,
            email=f"r{n}@x.com",
        )
        made.append(make_letter("test", Endpoint.TRACK_BULK, event, Failure(kind, "500"), 3))
    return made


def load(start: int, size: int) -> list[dict[str, Any]]:
    return [
        {
            "event_type": "Tick",
            "user_id": f"user-{n % 30:05d}",
            "insert_id": f"tick-{n}",
            "user_properties": {"$set": {"email": f"u{n % 30}@example.com"}},
        }
        for n in range(start, start + size)
    ]


async def cli(config: Path, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "dead-letters",
        *args,
        "--config",
        str(config),
        cwd=ROOT,
        env={**os.environ, "ITERABLE_KEY": "iterable-secret-key-0123456789"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def on_disk(path: Path) -> list[DeadLetter]:
    return [letter for letter in read_letters(path) if isinstance(letter, DeadLetter)]


def asides(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if ".replaying-" in p.name]


# --- the CLI over files -----------------------------------------------------------------


async def test_list_counts_show_prints_letters_purge_needs_a_filter(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), "http://127.0.0.1:9")
    path = dead_letter_path(tmp_path / "var", "test")
    DeadLetterFile(path, fsync=False).write(letters(3) + letters(2, FailureKind.USER_NOT_FOUND))
    code, out, _ = await cli(config)
    assert code == 0 and "test: 5 dead letter(s)" in out
    assert "       3  retries_exhausted" in out and "@x.com" not in out  # list: no emails
    code, out, _ = await cli(config, "list", "--json", "--reason", "user_not_found")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["total"] == 2 and row["by_kind"] == {"user_not_found": 2}
    code, out, _ = await cli(config, "show", "--json")
    shown = [json.loads(line) for line in out.splitlines()]
    assert [s["item"]["email"] for s in shown] == [f"r{n}@x.com" for n in (0, 1, 2, 0, 1)]
    code, out, _ = await cli(config, "show", "--id", shown[4]["id"])
    assert code == 0 and out.startswith(shown[4]["id"]) and "r1@x.com" in out
    assert out.count("\n    item:") == 1
    code, out, err = await cli(config, "purge")
    assert code == 2 and "--all" in err and len(on_disk(path)) == 5
    code, out, _ = await cli(config, "purge", "--reason", "user_not_found", "--dry-run")
    assert "test: 2 would be purged" in out and len(on_disk(path)) == 5
    code, out, _ = await cli(config, "purge", "--id", shown[0]["id"])
    assert code == 0 and "test: 1 purged" in out
    assert [l.item["id"] for l in on_disk(path)] == [f"replayed-{n}" for n in (1, 2, 0, 1)]
    code, out, _ = await cli(config, "replay", "--dry-run", "--since", "1h")
    assert "test: 4 would be resent" in out and len(on_disk(path)) == 4
    code, _, err = await cli(config, "list", "--since", "last tuesday")
    assert code == 2 and "duration" in err


# --- replay through the daemon ----------------------------------------------------------


async def test_replay_beside_a_running_daemon_never_exceeds_the_rate_limit(
    tmp_path: Path,
) -> None:
    state = SimulatorState()
    sim = SimulatorConfig(track_bulk_per_second=5, bulk_update_per_second=50)
    runner, sim_url = await serve(build_simulator_app(sim, state))
    port = free_port()
    config = write_config(tmp_path, port, sim_url)
    path = dead_letter_path(tmp_path / "var", "test")
    DeadLetterFile(path, fsync=False).write(letters(400))
    daemon = await DaemonProcess(config, port).start()
    posted: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()

            async def steady_load() -> None:
                # 40 events/s: with the replay on top, more than 5 requests/s of 20 want out.
                n = 0
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    status, _ = await post_events(session, daemon.url, load(n, 20))
                    if status == 200:
                        posted.extend(f"tick-{i}" for i in range(n, n + 20))
                        n += 20
                    await asyncio.sleep(0.5)

            loader = asyncio.create_task(steady_load())
            await eventually(lambda: len(posted) >= 60, timeout=20)
            code, out, err = await cli(config, "replay", "--timeout", "120")
            stop.set()
            await loader
            assert code == 0, err
            assert "in the daemon at http://127.0.0.1" in err  # not a second sender
            assert "resent 400" in err and "left 0" in out + err
            assert "test: resent 400, delivered 400, dead again 0" in out
            await eventually(lambda: len(state.events) >= 400 + len(posted), timeout=60)
    finally:
        await daemon.stop()
        await runner.cleanup()
    ids = {e["id"] for e in state.events}
    assert {f"replayed-{n}" for n in range(400)} <= ids
    replayed_events = [e for e in state.events if e["id"].startswith("replayed-")]
    assert all(e["createdAt"] == 1_600_000_000 + int(e["id"][9:]) for e in replayed_events)
    # The simulator's sliding one-second windows: never more than the limit, no 429.
    assert 0 < state.max_requests_in_one_second[TRACK] <= 5
    assert state.rate_limited == 0
    assert on_disk(path) == [] and asides(path) == []


async def test_kill_9_mid_replay_puts_every_letter_back_at_the_next_start(
    tmp_path: Path,
) -> None:
    # A slow Iterable: each request of 20 takes 0.4 s, so the replay is caught part way.
    state = SimulatorState()
    sim = SimulatorConfig(track_bulk_per_second=5, bulk_update_per_second=50, latency_ms=400)
    runner, sim_url = await serve(build_simulator_app(sim, state))
    port = free_port()
    config = write_config(tmp_path, port, sim_url)
    path = dead_letter_path(tmp_path / "var", "test")
    DeadLetterFile(path, fsync=False).write(letters(200))
    try:
        daemon = await DaemonProcess(config, port).start()
        async with aiohttp.ClientSession() as session:
            async with session.post(
                daemon.admin_url + "/dead-letters/replay", json={"reason": "retries_exhausted"}
            ) as response:
                assert response.status == 202
                replay_id = (await response.json())["id"]

            async def part_way() -> bool:
                url = f"{daemon.admin_url}/dead-letters/replay/{replay_id}"
                async with session.get(url) as response:
                    (sync,) = (await response.json())["syncs"]
                return bool(0 < sync["delivered"] < 200)

            await eventually(part_way, timeout=30, every=0.05)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.wait(10)
        assert len(asides(path)) == 1  # the letters in flight were still aside
        # The next start puts them back; delivered or not, none is lost.
        sim.latency_ms = 0
        sim.track_bulk_per_second = 100
        daemon = await DaemonProcess(config, port).start()
        assert asides(path) == []
        delivered = set(state.event_ids)
        back = {letter.item["id"] for letter in on_disk(path)}
        assert delivered | back >= {f"replayed-{n}" for n in range(200)}
        assert back and delivered & {f"replayed-{n}" for n in range(200)}
        code, _, err = await cli(config, "replay", "--timeout", "60")
        assert code == 0, err
        await daemon.stop()
    finally:
        await runner.cleanup()
    assert {f"replayed-{n}" for n in range(200)} <= state.event_ids
    assert on_disk(path) == [] and asides(path) == []


# --- the cap ----------------------------------------------------------------------------


def bad_user(n: int) -> dict[str, Any]:
    return {
        "event_type": "$identify",
        "user_id": f"bad-{n:05d}",
        "user_properties": {"$set": {"email": f"b{n}@invalid.test", "plan": "pro"}},
    }


async def test_past_the_cap_letters_wait_unwritten_until_ingest_says_429(
    tmp_path: Path,
) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, durability="journal")
    storage = msgspec.structs.replace(
        config.storage,
        dead_letter_max_bytes=4096,
        journal_max_bytes=40_000,
        journal_segment_bytes=4096,
    )
    config = msgspec.structs.replace(config, storage=storage)
    path = dead_letter_path(config.storage.path, "test")
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(0, 60, 10):
                await post_events(session, daemon.url, [bad_user(u) for u in range(n, n + 10)])

            async def status() -> dict[str, Any]:
                async with session.get(daemon.admin_url + "/status") as response:
                    (sync,) = (await response.json())["syncs"]
                    return dict(sync)

            async def capped() -> bool:
                return bool((await status())["dead_letters_unwritten"] > 0)

            await eventually(capped, timeout=20)
            sync = await status()
            assert sync["dead_letter_file"]["at_cap"] is True
            assert "dead_letter_max_bytes" in sync["last_error"]["message"]
            assert path.stat().st_size <= 4096
            async with session.get(daemon.admin_url + "/metrics") as response:
                metrics = await response.text()
            assert f'forwarder_dead_letter_bytes{{sync="test"}} {float(path.stat().st_size)}' in (
                metrics
            )
            # Nothing is dropped: the journal keeps the waiting items until it is full.
            refused = 0
            for n in range(60, 6000, 30):
                code, _ = await post_events(
                    session, daemon.url, [bad_user(u) for u in range(n, n + 30)]
                )
                if code == 429:
                    refused += 1
                    break
            assert refused, "ingest never answered 429 with the dead-letter file at its cap"
            # The operator purges (again as the waiting letters fill the file up again):
            # each waiting letter is written, its record acknowledged, and ingest flows.
            purged = 0

            async def flowing() -> bool:
                nonlocal purged
                (removed,) = purge(config, None, LetterFilter(reason="invalid_identity"))
                purged += removed.total
                sync = await status()
                return (
                    sync["dead_letters_unwritten"] == 0 and not sync["dead_letter_file"]["at_cap"]
                )

            await eventually(flowing, timeout=60, every=0.5)
            assert purged > 0
            await eventually(
                lambda: not daemon.pipeline.log.full and daemon.pipeline.refusal(1) is None,
                timeout=20,
            )
            code, _ = await post_events(session, daemon.url, [bad_user(10**6)])
            assert code == 200
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()


async def test_a_daemon_stopping_mid_replay_puts_back_only_what_did_not_settle(
    tmp_path: Path,
) -> None:
    # Iterable answers after 1.5 s: a 0.3 s drain leaves the replay part way.
    state = SimulatorState()
    sim = SimulatorConfig(latency_ms=1500)
    runner, sim_url = await serve(build_simulator_app(sim, state))
    config = make_config(
        tmp_path, sim_url, limits={"max_events_per_request": 10}, delivery={"max_in_flight": 1}
    )
    path = dead_letter_path(config.storage.path, "test")
    DeadLetterFile(path, fsync=False).write(letters(30))
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            replay_url = daemon.admin_url + "/dead-letters/replay"
            async with session.post(replay_url, json={"dry_run": True, "since": "1h"}) as r:
                (dry,) = (await r.json())["syncs"]
            assert dry["total"] == 30 and len(on_disk(path)) == 30 and asides(path) == []
            async with session.post(replay_url, json={"sync": "nope"}) as r:
                assert r.status == 404
            async with session.post(replay_url, json={"since": "soon"}) as r:
                assert r.status == 400 and "duration" in (await r.json())["error"]
            async with session.post(replay_url, json={}) as r:
                assert r.status == 202
            await eventually(lambda: len(state.event_ids) >= 10, timeout=20)
        await daemon.drain_and_stop(timeout=0.3)
    finally:
        await runner.cleanup()
    delivered = {i for i in state.event_ids if i.startswith("replayed-")}
    back = {letter.item["id"] for letter in on_disk(path)}
    assert delivered and back
    assert delivered | back == {f"replayed-{n}" for n in range(30)}
    assert asides(path) == []
