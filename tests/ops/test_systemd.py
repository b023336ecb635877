"""systemd notifications while the journal replays: STATUS=, EXTEND_TIMEOUT_USEC=, READY=1."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.daemon import open_pipeline
from forwarder.ops.systemd import EXTEND_SECONDS, StartupProgress, notify
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.harness import AMPLITUDE_KEY, Daemon, make_config, post_events, serve
from tests.processes import DaemonProcess, free_port, listen_lines

EXTEND = f"EXTEND_TIMEOUT_USEC={int(EXTEND_SECONDS * 1_000_000)}"


def events(request: int, count: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "event_type": "Purchase",
            "user_id": f"user-{request}-{n}",
            "insert_id": f"i-{request}-{n}",
            "user_properties": {"email": f"u{request}-{n}@example.com"},
            "event_properties": {"price": n},
        }
        for n in range(count)
    ]


@contextmanager
def notify_socket(path: Path) -> Iterator[list[str]]:
    """A bound datagram socket at `path`, read by a thread (systemd's queue is 10 deep)."""
    received: list[str] = []
    done = threading.Event()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)

    def read() -> None:
        while not done.is_set():
            try:
                received.append(sock.recv(65536).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield received
    finally:
        # Whatever is still queued is read before the thread stops.
        deadline = time.monotonic() + 1
        count = -1
        while count != len(received) and time.monotonic() < deadline:
            count = len(received)
            time.sleep(0.1)
        done.set()
        reader.join(2)
        sock.close()


def test_progress_is_sent_at_most_once_per_interval_and_extends_the_timeout() -> None:
    now = [100.0]
    sent: list[str] = []
    progress = StartupProgress(
        interval=1.0, send=lambda m: sent.append(m) or True, clock=lambda: now[0]
    )
    progress.replaying(0, 500)  # a start shorter than the interval says nothing
    assert sent == []
    for done in range(500):
        now[0] += 0.01  # 5 s of replay in all
        progress.replaying(done, 500)
    assert 4 <= len(sent) <= 5
    for message in sent:
        status, extend = message.split("\n")
        assert status.startswith("STATUS=replaying journal: ") and status.endswith(
            " of 500 records"
        )
        assert extend == EXTEND
    shown = [int(m.split(": ")[1].split(" ")[0]) for m in sent]
    assert shown == sorted(shown) and shown[-1] < 500

    progress.reading(150 << 20, 600 << 20)  # within the interval of the last one: nothing
    now[0] += 1.0
    progress.reading(150 << 20, 600 << 20)
    assert sent[-1] == f"STATUS=reading journal: 150 of 600 MiB scanned\n{EXTEND}"
    progress.ready("listening")
    assert sent[-2:] == ["STATUS=ready: listening", "READY=1"]


async def test_journal_replay_reports_progress_over_a_notify_socket(tmp_path: Path) -> None:
    """A real journal of 60 records in several segments, replayed by the pipeline, with
    the progress sent as datagrams to a socket such as systemd's NOTIFY_SOCKET."""
    state = SimulatorState()
    held = SimulatorConfig(down_until=time.monotonic() + 3600)  # nothing is delivered
    runner, sim_url = await serve(build_simulator_app(held, state))
    config = make_config(tmp_path, sim_url, durability="journal")
    config.storage.journal_segment_bytes = 20_000  # a few records per segment
    try:
        daemon = await Daemon(config).start()
        async with aiohttp.ClientSession() as session:
            for request in range(60):
                status, _ = await post_events(session, daemon.url, events(request))
                assert status == 200
        await daemon.crash()
        segments = list((tmp_path / "var" / "journal").glob("segment-*.log"))
        assert len(segments) >= 3

        path = tmp_path / "notify.sock"
        # A clock that moves one interval per reading: every report is due.
        ticks = itertools.count()
        with notify_socket(path) as received:
            progress = StartupProgress(
                interval=1.0,
                send=lambda m: notify(m, {"NOTIFY_SOCKET": str(path)}),
                clock=lambda: float(next(ticks)),
            )
            pipeline = await open_pipeline(config)
            replayed = await pipeline.recover(progress.reading, progress.replaying)
            progress.ready(f"{replayed} journal record(s) replayed")
            queued = sum(delivery.lanes.items for delivery in pipeline.deliveries)
            await pipeline.start()
            await pipeline.stop()
        assert replayed == 60 and queued >= 60 * 20  # the events, and user updates
        reading = [m for m in received if m.startswith("STATUS=reading journal: ")]
        replaying = [m for m in received if m.startswith("STATUS=replaying journal: ")]
        assert len(reading) == len(segments)
        assert len(replaying) == 60
        assert replaying[0] == f"STATUS=replaying journal: 0 of 60 records\n{EXTEND}"
        assert replaying[-1] == f"STATUS=replaying journal: 59 of 60 records\n{EXTEND}"
        assert received[-2:] == ["STATUS=ready: 60 journal record(s) replayed", "READY=1"]
    finally:
        await runner.cleanup()


async def test_daemon_reports_replayed_records_before_ready(tmp_path: Path) -> None:
    """`forwarder run` as systemd starts it: STATUS=ready names what it replayed, then
    READY=1; a drain sends STOPPING=1 and the time it may take."""
    state = SimulatorState()
    held = SimulatorConfig(down_until=time.monotonic() + 3600)
    runner, sim_url = await serve(build_simulator_app(held, state))
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
{listen_lines(port)}
api_keys = ["{AMPLITUDE_KEY}"]
drain_timeout_seconds = 1

[storage]
path = "{tmp_path / "var"}"

[[syncs]]
name = "test"
api_key = "${{ITERABLE_KEY}}"
base_url = "{sim_url}"
"""
    )
    try:
        first = await DaemonProcess(config, port).start()
        async with aiohttp.ClientSession() as session:
            for request in range(5):
                status, _ = await post_events(session, first.url, events(request, 3))
                assert status == 200
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        await first.wait(10)

        path = tmp_path / "notify.sock"
        with notify_socket(path) as received:
            again = await DaemonProcess(config, port, env={"NOTIFY_SOCKET": str(path)}).start()
            assert again.process is not None
            again.process.send_signal(signal.SIGTERM)
            assert await again.wait(20) == 0
        ready = received.index("READY=1")
        assert received[ready - 1] == (
            f"STATUS=ready: listening on 127.0.0.1:{port}, 5 journal record(s) replayed"
        )
        # The drain (1 s) and the connections' grace (5 s), and 30 s for the checkpoint.
        assert received[ready + 1 :] == [
            "STOPPING=1",
            "STATUS=draining for up to 6 s\nEXTEND_TIMEOUT_USEC=36000000",
        ]
    finally:
        await runner.cleanup()
