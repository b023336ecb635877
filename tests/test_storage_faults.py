"""Storage under real faults, the daemon as a subprocess: a full disk, a second daemon on
the same path, flipped bytes in a journal segment. A 200 still means delivered."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.framing import HEADER_SIZE, scan_frames
from forwarder.store.records import decode_record
from tests.harness import eventually, iterable_id, post_events, serve
from tests.processes import ROOT, DaemonProcess, free_port
from tests.test_durability import batch, write_config

TMPFS_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs mounted at the daemon's storage.path (tmp_path/var) for this test."""
    storage = tmp_path / "var"
    storage.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting an 8 MB tmpfs needs root (CI and the dev machine run as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(storage)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            "these tests need `mount -t tmpfs` (root with CAP_SYS_ADMIN) to make a real "
            f"ENOSPC: {mounted.stderr.strip()}"
        )
    try:
        yield storage
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)


def fill(folder: Path, leave: int = 0, name: str = "filler") -> Path:
    """Use up the folder's filesystem but `leave` bytes, with one file; the file."""
    filler = folder / name
    with open(filler, "wb") as file:
        try:
            for _ in range(TMPFS_BYTES // 65536 + 16):  # bounded: the disk is 8 MB
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.fixture
def started() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts; any still running when it ends (a failure) are killed."""
    daemons: list[DaemonProcess] = []
    yield daemons
    for daemon in daemons:
        if daemon.process is not None and daemon.process.returncode is None:
            daemon.process.kill()


async def launch(started: list[DaemonProcess], config: Path, port: int) -> DaemonProcess:
    daemon = DaemonProcess(config, port)
    started.append(daemon)
    return await daemon.start()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


class Load:
    """Posts batches with unique insert_ids; remembers every status and what got a 200."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.statuses: list[int] = []
        self.acknowledged: set[str] = set()
        self.next = 0

    async def post(self) -> tuple[int, dict[str, Any]]:
        events = batch(self.next)
        self.next += len(events)
        status, body = await post_events(self.session, self.url, events)
        self.statuses.append(status)
        if status == 200:
            self.acknowledged.update(iterable_id(e) for e in events)
        return status, body


async def simulator(config: SimulatorConfig, state: SimulatorState) -> tuple[web.AppRunner, str]:
    return await serve(build_simulator_app(config, state))


def held_back() -> SimulatorConfig:
    """Iterable down for now, so everything acknowledged stays queued in the journal."""
    return SimulatorConfig(track_bulk_per_second=50, down_until=time.monotonic() + 3600)


class HeldBack(NamedTuple):
    """A held-back simulated Iterable and a daemon config pointing at it."""

    state: SimulatorState
    sim_config: SimulatorConfig
    runner: web.AppRunner
    config: Path
    port: int


async def held_back_setup(tmp_path: Path, **extra: str) -> HeldBack:
    state, sim_config = SimulatorState(), held_back()
    runner, sim_url = await simulator(sim_config, state)
    port = free_port()
    config = write_config(tmp_path, port, sim_url, rate="50", **extra)
    return HeldBack(state, sim_config, runner, config, port)


async def test_disk_full_mid_load_answers_503_and_loses_nothing_across_kill_9(
    tmp_path: Path, small_disk: Path, started: list[DaemonProcess]
) -> None:
    state, sim_config, runner, config, port = await held_back_setup(tmp_path)
    try:
        daemon = await launch(started, config, port)
        async with aiohttp.ClientSession() as session:
            load = Load(session, daemon.url)
            filler = fill(small_disk, leave=1024 * 1024)

            # Four clients at once, so failing groups hold several requests.
            async def client() -> None:
                for _ in range(100):  # bounded; ~1 MB of journal fills the disk sooner
                    status, body = await load.post()
                    if status == 503:
                        assert body["code"] == 503 and "retry" in body["error"]
                        return

            await asyncio.gather(*(client() for _ in range(4)))
            assert 503 in load.statuses, "the disk never filled"
            # What the cut-back groups gave back is taken too, so the probe fails as well.
            top_up = fill(small_disk, name="top-up")

            async def readiness(expected: int) -> bool:
                return (await get_json(session, daemon.url + "/readyz"))[0] == expected

            await eventually(lambda: readiness(503), timeout=5)
            top_ups = [top_up]

            async def refused_up_front() -> bool:
                # A failed write's clean-up (a cut-back group, SQLite's WAL) can still give
                # space back after the top-up, and a probe then passes: take it too, so
                # the probe fails and the next request is refused before any write.
                top_ups.append(fill(small_disk, name=f"top-up-{len(top_ups)}"))
                status, body = await load.post()
                return status == 503 and body["code"] == 503

            await eventually(refused_up_front, timeout=10, every=1.5)
            _, status_page = await get_json(session, daemon.admin_url + "/status")
            assert "ENOSPC" in status_page["storage_fault"]
            async with session.get(daemon.admin_url + "/metrics") as response:
                metrics = await response.text()
            assert "forwarder_storage_unavailable 1.0" in metrics
            assert 'forwarder_requests_rejected_total{reason="storage_unavailable"}' in metrics
            full_at = len(load.statuses)

            filler.unlink()  # space is back: the probe turns storage on again
            for taken in top_ups:
                taken.unlink()

            async def accepted_again() -> bool:
                return (await load.post())[0] == 200

            await eventually(accepted_again, timeout=15, every=0.2)
            await eventually(lambda: readiness(200), timeout=5)
            for _ in range(40):
                await load.post()
            assert load.statuses[full_at:].count(200) >= 40

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        assert await daemon.wait(10) == -signal.SIGKILL
        assert 500 not in load.statuses, load.statuses
        assert set(load.statuses) <= {200, 429, 503}
        assert not load.acknowledged & state.event_ids, "Iterable was down: nothing went yet"

        sim_config.down_until = 0.0
        restarted = await launch(started, config, port)
        async with aiohttp.ClientSession() as session:
            _, status = await get_json(session, restarted.admin_url + "/status")
        # Every failed write was cut back: the journal holds no torn frame to skip.
        assert status["journal"]["recovery_problems"] == []
        await eventually(lambda: load.acknowledged <= state.event_ids, timeout=60)
        assert restarted.process is not None
        restarted.process.send_signal(signal.SIGTERM)
        assert await restarted.wait(30) == 0
    finally:
        await runner.cleanup()
    assert load.acknowledged <= state.event_ids


async def test_sigterm_on_a_full_disk_exits_0_and_says_what_stays_in_the_journal(
    tmp_path: Path, small_disk: Path, started: list[DaemonProcess]
) -> None:
    state, sim_config, runner, config, port = await held_back_setup(tmp_path, drain="1")
    try:
        daemon = await launch(started, config, port)
        async with aiohttp.ClientSession() as session:
            load = Load(session, daemon.url)
            for _ in range(5):
                assert (await load.post())[0] == 200
            filler = fill(small_disk)
            for _ in range(200):  # bounded: the first write past the filler fails
                if (await load.post())[0] == 503:
                    break
            assert load.statuses[-1] == 503
            assert (await get_json(session, daemon.url + "/readyz"))[0] == 503
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
        output = daemon.output()
        assert "the journal keeps every record past checkpoint 0 (up to seq 6)" in output
        assert "unexpected error" not in output  # what the ingest routes log for a 500
        assert 500 not in load.statuses

        filler.unlink()
        sim_config.down_until = 0.0
        restarted = await launch(started, config, port)
        await eventually(lambda: load.acknowledged <= state.event_ids, timeout=30)
        assert restarted.process is not None
        restarted.process.send_signal(signal.SIGTERM)
        assert await restarted.wait(30) == 0
    finally:
        await runner.cleanup()


async def test_a_second_daemon_on_the_same_path_exits_2_naming_path_and_pid(
    tmp_path: Path, started: list[DaemonProcess]
) -> None:
    runner, sim_url = await simulator(SimulatorConfig(), SimulatorState())
    port, other_port = free_port(), free_port()
    config = write_config(tmp_path, port, sim_url)
    second_config = tmp_path / "second.toml"
    second_config.write_text(
        config.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{other_port}")
    )
    try:
        first = await launch(started, config, port)
        assert first.process is not None
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forwarder",
            "run",
            "--config",
            str(second_config),
            cwd=ROOT,
            env={**os.environ, "ITERABLE_KEY": "iterable-secret-key-0123456789"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(second.communicate(), 20)
        finally:
            if second.returncode is None:  # it should have exited at once
                second.kill()
        assert second.returncode == 2
        lines = output.decode().strip().splitlines()
        assert len(lines) == 1, lines
        message = json.loads(lines[0])["message"]
        assert str(tmp_path / "var") in message and f"PID {first.process.pid}" in message

        async with aiohttp.ClientSession() as session:  # the first one is unharmed
            assert (await post_events(session, first.url, batch(0)))[0] == 200
        first.process.send_signal(signal.SIGTERM)
        assert await first.wait(30) == 0
    finally:
        await runner.cleanup()


def frame_spans(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, payload) of each frame in an undamaged segment."""
    spans, offset = [], 0
    for _, payload in scan_frames(data).records:
        end = offset + HEADER_SIZE + len(payload)
        spans.append((offset, end, payload))
        offset = end
    return spans


def event_ids_in(payload: bytes) -> set[str]:
    return {
        json.loads(item.item)["id"]
        for item in decode_record(payload).items
        if item.endpoint == "events/trackBulk"
    }


async def test_flipped_bytes_mid_segment_lose_only_that_record(
    tmp_path: Path, started: list[DaemonProcess]
) -> None:
    state, sim_config, runner, config, port = await held_back_setup(tmp_path, drain="1")
    try:
        daemon = await launch(started, config, port)
        async with aiohttp.ClientSession() as session:
            load = Load(session, daemon.url)
            for _ in range(150):
                assert (await load.post())[0] == 200
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)  # Iterable down: nothing was delivered
        assert await daemon.wait(30) == 0

        journal = tmp_path / "var" / "journal"
        (segment,) = [p for p in journal.glob("segment-*.log") if p.stat().st_size > 0]
        raw = bytearray(segment.read_bytes())
        spans = frame_spans(bytes(raw))
        assert len(spans) == 150
        middle = len(raw) // 2
        start, end, payload = next(span for span in spans if span[0] <= middle < span[1])
        lost = event_ids_in(payload)
        assert len(lost) == 50
        for k in range(4):
            raw[middle + k] ^= 0xA5
        segment.write_bytes(bytes(raw))

        sim_config.down_until = 0.0
        restarted = await launch(started, config, port)
        expected = load.acknowledged - lost
        await eventually(lambda: expected <= state.event_ids, timeout=60)
        async with aiohttp.ClientSession() as session:
            _, status = await get_json(session, restarted.admin_url + "/status")
            async with session.get(restarted.admin_url + "/metrics") as response:
                metrics = await response.text()
        assert restarted.process is not None
        restarted.process.send_signal(signal.SIGTERM)
        assert await restarted.wait(30) == 0
    finally:
        await runner.cleanup()
    assert state.event_ids == expected  # all but the damaged record's 50 events
    (problem,) = status["journal"]["recovery_problems"]
    assert f"{start}-{end}" in problem
    assert status["journal"]["recovery_skipped_bytes"] == end - start
    assert f"forwarder_journal_recovery_skipped_bytes {float(end - start)}" in metrics
    copy = tmp_path / "var" / "damaged" / f"{segment.name}.{start}-{end}.bin"
    assert copy.read_bytes() == bytes(raw[start:end])  # the damaged bytes, kept as found
