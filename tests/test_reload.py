"""SIGHUP re-reads config.toml: the daemon stays up and later events follow the new syncs."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from forwarder.config import Config
from forwarder.daemon import open_pipeline
from forwarder.deliver.rate import RateGates
from forwarder.ingest.amplitude import Event
from forwarder.iterable import Endpoint
from forwarder.pipeline import Pipeline
from forwarder.reload import diff_configs
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import DeadLetter, dead_letter_path, read_letters
from forwarder.store.log import NoLog
from tests.harness import (
    AMPLITUDE_KEY,
    ITERABLE_KEY,
    Daemon,
    eventually,
    make_config,
    post_events,
    serve,
)
from tests.processes import DaemonProcess, free_port

# --- helpers ---------------------------------------------------------------------------


def sync_toml(name: str, url: str, extra: str = "", **limits: Any) -> str:
    rate = limits.get("rate", 50)
    per_request = limits.get("per_request", 100)
    return f"""
[[syncs]]
name = "{name}"
api_key = "${{ITERABLE_KEY}}"
base_url = "{url}"
{extra}

[syncs.limits]
track_bulk_per_second = {rate}
bulk_update_per_second = 50
max_events_per_request = {per_request}

[syncs.delivery]
linger_ms = 20
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
"""


def config_toml(tmp_path: Path, port: int, admin_port: int, syncs: str, drain: int = 15) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
api_keys = ["{AMPLITUDE_KEY}"]
drain_timeout_seconds = {drain}

[storage]
path = "{tmp_path / "var"}"
durability = "journal"
{syncs}
"""


def event(n: int, event_type: str = "Tick", user: int | None = None) -> dict[str, Any]:
    who = n % 5 if user is None else user
    return {
        "event_type": event_type,
        "user_id": f"user-{who}",
        "insert_id": f"{event_type}-{n}",
        "event_properties": {"n": n, "color": f"c{n}"},
        "user_properties": {"$set": {"email": f"u{who}@example.com"}},
    }


async def sim(config: SimulatorConfig | None = None) -> tuple[web.AppRunner, str, SimulatorState]:
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(config or SimulatorConfig(), state))
    return runner, url, state


def ns(state: SimulatorState) -> list[int]:
    return [e["dataFields"]["n"] for e in state.events]


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.json()


# --- the daemon as a process -------------------------------------------------------------


async def test_sighup_applies_a_changed_config_without_stopping(tmp_path: Path) -> None:
    main_runner, main_url, main = await sim()
    # The sync to be removed: slow (one event a request, 4 requests/s), so a backlog is
    # still queued for it when the reload removes it.
    old_runner, old_url, old = await sim()
    new_runner, new_url, new = await sim()
    port, admin_port = free_port(), free_port()
    path = tmp_path / "config.toml"
    main_first = sync_toml("main", main_url, '[syncs.events]\nevent_properties = ["n"]')
    path.write_text(
        config_toml(
            tmp_path,
            port,
            admin_port,
            main_first
            + sync_toml(
                "old", old_url, '[syncs.events]\nevent_properties = ["n"]', rate=4, per_request=1
            ),
        )
    )
    daemon = await DaemonProcess(path, port).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    admin = f"http://127.0.0.1:{admin_port}"
    not_ready: list[int] = []
    watcher: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:

            async def watch_ready() -> None:
                for _ in range(2000):  # bounded: cancelled long before
                    try:
                        async with session.get(daemon.url + "/readyz") as response:
                            if response.status != 200:
                                not_ready.append(response.status)
                    except aiohttp.ClientError:
                        not_ready.append(-1)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch_ready())
            first = [event(n) for n in range(12)] + [event(100, "Other")]
            status, _ = await post_events(session, daemon.url, first)
            assert status == 200
            await eventually(lambda: len(main.events) == 13)
            assert all("color" not in e["dataFields"] for e in main.events)
            assert len(old.events) < 13, "no backlog left for the removed sync"

            # main: a new event property, "Other" deselected; old: removed; new: added.
            # A [server] change too, which needs a restart: warned about, kept as it was.
            path.write_text(
                config_toml(
                    tmp_path,
                    port,
                    admin_port,
                    sync_toml(
                        "main",
                        main_url,
                        '[syncs.events]\nselect = ["Tick"]\nevent_properties = ["n", "color"]',
                    )
                    + sync_toml("new", new_url),
                    drain=9,
                )
            )
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            daemon.process.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                body = await get_json(session, admin + "/status")
                return bool(body["config"]["sha256"] == digest)

            await eventually(reloaded, timeout=10)
            body = await get_json(session, admin + "/status")
            assert body["config"]["reloads"] == 1
            assert body["config"]["last_reload_error"] is None
            assert body["config"]["path"] == str(path)
            names = {s["name"]: s for s in body["syncs"]}
            assert "new" in names and "main" in names
            if "old" in names:  # still draining its backlog
                assert names["old"]["draining"] is True
                assert names["old"]["state"] in ("draining", "paused")

            second = [event(n) for n in range(200, 206)] + [event(300, "Other")]
            status, _ = await post_events(session, daemon.url, second)
            assert status == 200
            await eventually(lambda: len(new.events) == 7)  # a new sync takes everything
            await eventually(lambda: len(main.events) == 13 + 6)
            later = main.events[13:]
            assert sorted(e["dataFields"]["n"] for e in later) == list(range(200, 206))
            assert all(e["dataFields"]["color"] == f"c{e['dataFields']['n']}" for e in later)
            # The removed sync's backlog arrives, and nothing accepted after the reload.
            await eventually(lambda: len(old.events) == 13, timeout=20)
            assert sorted(ns(old)) == sorted([*range(12), 100])

            async def old_gone() -> bool:
                body = await get_json(session, admin + "/status")
                return all(s["name"] != "old" for s in body["syncs"])

            await eventually(old_gone, timeout=10)
            body = await get_json(session, admin + "/status")
            main_status = next(s for s in body["syncs"] if s["name"] == "main")
            assert main_status["totals"]["skipped"]["not_selected"] == 1
            async with session.get(admin + "/metrics") as response:
                metrics = await response.text()
            assert 'forwarder_config_reloads_total{result="ok"} 1.0' in metrics
            forwarded = "forwarder_sync_items_forwarded_total"
            labels = f'{{endpoint="{Endpoint.TRACK_BULK.value}",sync="main"}}'
            assert f"{forwarded}{labels} 19.0" in metrics
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            watcher = None
        assert not_ready == []
        assert daemon.process.returncode is None and daemon.process.pid == pid
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait(20) == 0
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await daemon.stop()
        for runner in (main_runner, old_runner, new_runner):
            await runner.cleanup()
    output = daemon.output()
    restart_lines = [
        line for line in output.splitlines() if "only take effect at a restart" in line
    ]
    assert len(restart_lines) == 1 and "server.drain_timeout_seconds" in restart_lines[0]
    assert "config reloaded" in output


async def test_sighup_with_a_broken_config_keeps_the_one_in_force(tmp_path: Path) -> None:
    runner, url, state = await sim()
    port, admin_port = free_port(), free_port()
    path = tmp_path / "config.toml"
    good = config_toml(tmp_path, port, admin_port, sync_toml("main", url))
    path.write_text(good)
    digest = hashlib.sha256(good.encode()).hexdigest()
    # Not daemon.admin_url: that reads the config file, which this test breaks.
    admin = f"http://127.0.0.1:{admin_port}"
    daemon = await DaemonProcess(path, port).start()
    assert daemon.process is not None
    try:
        async with aiohttp.ClientSession() as session:
            broken = good.replace("track_bulk_per_second = 50", "track_bulk_per_second = -1")
            path.write_text(broken)
            daemon.process.send_signal(signal.SIGHUP)

            async def refused() -> bool:
                body = await get_json(session, admin + "/status")
                return body["config"]["last_reload_error"] is not None

            await eventually(refused, timeout=10)
            body = await get_json(session, admin + "/status")
            error = body["config"]["last_reload_error"]
            assert "syncs[0].limits.track_bulk_per_second" in error
            assert body["config"]["sha256"] == digest
            assert body["config"]["reloads"] == 0

            # A file that is not TOML at all: refused the same way.
            path.write_text(good + "\n[[syncs\n")
            daemon.process.send_signal(signal.SIGHUP)

            async def refused_twice() -> bool:
                body = await get_json(session, admin + "/status")
                return "not valid TOML" in (body["config"]["last_reload_error"] or "")

            await eventually(refused_twice, timeout=10)
            async with session.get(admin + "/metrics") as response:
                metrics = await response.text()
            assert 'forwarder_config_reloads_total{result="refused"} 2.0' in metrics

            # The old config is in force: events flow as before.
            status, _ = await post_events(session, daemon.url, [event(n) for n in range(5)])
            assert status == 200
            await eventually(lambda: len(state.events) == 5)
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait(20) == 0
    finally:
        await daemon.stop()
        await runner.cleanup()
    lines = [line for line in daemon.output().splitlines() if "config reload refused" in line]
    assert len(lines) == 2, lines
    assert "syncs[0].limits.track_bulk_per_second" in lines[0]
    assert "not valid TOML" in lines[1]


# --- in this process ----------------------------------------------------------------------


class GatedLog(NoLog):
    """A log whose appends become durable only when the test says (a slow fsync)."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[int]] = []

    def append(self, payload: bytes, items: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


def two_syncs(tmp_path: Path, first: tuple[str, str], second: tuple[str, str]) -> Config:
    return make_config(
        tmp_path,
        "",
        syncs=[
            {
                "name": name,
                "api_key": ITERABLE_KEY,
                "base_url": url,
                "events": {"event_properties": ["n"]},
                "delivery": {"linger_ms": 10},
            }
            for name, url in (first, second)
            if name
        ],
    )


def events_of(*numbers: int) -> list[Event]:
    return [msgspec.convert(event(n), Event) for n in numbers]


async def test_a_request_in_flight_during_a_reload_goes_to_the_syncs_it_was_routed_for(
    tmp_path: Path,
) -> None:
    a_runner, a_url, a_state = await sim()
    b_runner, b_url, b_state = await sim()
    before = two_syncs(tmp_path, ("a", a_url), ("", ""))
    after = two_syncs(tmp_path, ("b", b_url), ("", ""))
    pipeline: Pipeline = await open_pipeline(before)
    gated = GatedLog()
    pipeline.log = gated
    await pipeline.recover()
    await pipeline.start()
    try:
        accepted = asyncio.create_task(pipeline.accept(events_of(1, 2)))
        await eventually(lambda: bool(gated.pending))
        # Routed for "a", not yet durable: the reload removes "a" and adds "b".
        await pipeline.apply_config(after)
        assert [d.name for d in pipeline.deliveries] == ["b"]
        assert "a" in pipeline.fleet.draining
        assert [s.name for s in pipeline.snapshot().syncs] == ["b", "a"]
        gated.pending[0].set_result(0)
        await accepted
        await eventually(lambda: sorted(ns(a_state)) == [1, 2])
        # "a" drained, then left; the next request goes to "b" alone.
        await eventually(lambda: "a" not in pipeline.fleet.draining)
        assert [s.name for s in pipeline.snapshot().syncs] == ["b"]
        later = asyncio.create_task(pipeline.accept(events_of(3)))
        await eventually(lambda: len(gated.pending) == 2)
        gated.pending[1].set_result(0)
        await later
        await eventually(lambda: ns(b_state) == [3])
        assert sorted(ns(a_state)) == [1, 2]
        assert b_state.events and not any(e["dataFields"]["n"] == 3 for e in a_state.events)
    finally:
        await pipeline.stop()
        await a_runner.cleanup()
        await b_runner.cleanup()


async def test_a_changed_api_key_applies_to_queued_items_in_user_order(tmp_path: Path) -> None:
    # Iterable knows only the new key: the old one is refused and the sync pauses with
    # the user's items queued; the reload's key sends them, in order, at once.
    runner, url, state = await sim(SimulatorConfig(api_keys=frozenset({"new-key-0123456789"})))
    config = make_config(
        tmp_path, url, events={"event_properties": ["n"]}, delivery={"auth_retry_seconds": 600.0}
    )
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            for start in range(0, 30, 10):  # three requests, one user
                events = [event(n, user=7) for n in range(start, start + 10)]
                status, _ = await post_events(session, daemon.url, events)
                assert status == 200
            delivery = daemon.pipeline.deliveries[0]
            await eventually(lambda: delivery.pause.reason is not None)
            assert delivery.lanes.items > 0 and state.events == []
            counters_before = dict(delivery.stats.requests)

            sync = config.syncs[0]
            changed = msgspec.structs.replace(
                config,
                syncs=[msgspec.structs.replace(sync, api_key="new-key-0123456789")],
            )
            assert diff_configs(config, changed).changed == ["test"]
            await daemon.pipeline.apply_config(changed)
            assert daemon.pipeline.deliveries[0] is delivery  # the same lanes, in place
            await eventually(lambda: len(state.events) == 30, timeout=10)
            assert ns(state) == list(range(30))
            assert delivery.stats.dead.total() == 0
            accepted = [r for r in state.requests if r.status == 200]
            assert accepted and {r.api_key for r in accepted} == {"new-key-0123456789"}
            # Counters go on from where they were.
            assert all(delivery.stats.requests[k] >= v for k, v in counters_before.items())
        await daemon.drain_and_stop()
    finally:
        await runner.cleanup()


async def test_recovery_dead_letters_items_of_a_sync_no_longer_configured(
    tmp_path: Path,
) -> None:
    # Iterable is down: the items stay in the journal when the daemon stops.
    runner, url, state = await sim(SimulatorConfig(down_until=time.monotonic() + 3600))
    first = two_syncs(tmp_path, ("keep", url), ("gone", url))
    first = msgspec.structs.replace(
        first, storage=msgspec.structs.replace(first.storage, durability="journal")
    )
    daemon = await Daemon(first).start()
    async with aiohttp.ClientSession() as session:
        status, _ = await post_events(session, daemon.url, [event(1), event(2)])
        assert status == 200
    assert not await daemon.drain_and_stop(timeout=0.5)

    # Restarted without "gone": its items become its dead letters, counted.
    second = msgspec.structs.replace(first, syncs=[first.syncs[0]])
    restarted = await Daemon(second).start()
    try:
        # Two events and the updates of their two (new) users.
        assert restarted.pipeline.unconfigured_dead_letters == {"gone": 4}
        letters = list(read_letters(dead_letter_path(first.storage.path, "gone")))
        assert len(letters) == 4
        assert all(isinstance(x, DeadLetter) and x.kind == "sync_removed" for x in letters)
        assert sorted(x.endpoint for x in letters if isinstance(x, DeadLetter)) == sorted(
            [Endpoint.TRACK_BULK.value] * 2 + [Endpoint.BULK_UPDATE.value] * 2
        )
        async with aiohttp.ClientSession() as session:
            body = await get_json(session, restarted.admin_url + "/status")
            assert body["unconfigured_sync_dead_letters"] == {"gone": 4}
            async with session.get(restarted.admin_url + "/metrics") as response:
                metrics = await response.text()
            assert 'forwarder_recovery_sync_removed_dead_letters_total{sync="gone"} 4.0' in metrics
        # "keep" still owes its items: the journal replayed the record for them.
        assert restarted.pipeline.replayed_records == 1
        assert [d.name for d in restarted.pipeline.deliveries] == ["keep"]
    finally:
        await restarted.pipeline.stop()
        await restarted.close_listeners()
        await runner.cleanup()


def test_diff_names_what_needs_a_restart_and_keeps_it(tmp_path: Path) -> None:
    old = two_syncs(tmp_path, ("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:1"))
    a, b = old.syncs
    new = msgspec.structs.replace(
        old,
        server=msgspec.structs.replace(old.server, listen="127.0.0.1:1", max_connections=7),
        storage=msgspec.structs.replace(old.storage, path=str(tmp_path / "elsewhere")),
        syncs=[
            msgspec.structs.replace(a, api_key="another"),
            msgspec.structs.replace(b, enabled=False),
            msgspec.structs.replace(b, name="c"),
        ],
    )
    change = diff_configs(old, new)
    assert change.needs_restart == ["server.listen", "server.max_connections", "storage.path"]
    assert change.effective.server == old.server and change.effective.storage == old.storage
    assert (change.added, change.removed, change.changed) == (["c"], ["b"], ["a"])
    assert change.effective.syncs == new.syncs
    assert diff_configs(old, old).summary == "no sync changed"


async def test_a_rate_retuned_by_a_reload_keeps_its_gate() -> None:
    config = make_config(Path("/nonexistent"), "http://127.0.0.1:1")
    sync = config.syncs[0]
    gates = RateGates([sync])
    stamp = await gates.acquire(sync.api_key, Endpoint.TRACK_BULK)
    gate = gates._gates[(sync.api_key, Endpoint.TRACK_BULK)]
    faster = msgspec.structs.replace(
        sync, limits=msgspec.structs.replace(sync.limits, track_bulk_per_second=40)
    )
    gates.configure([faster])
    assert gates._gates[(sync.api_key, Endpoint.TRACK_BULK)] is gate
    assert gate.rate == 40 and gate._window.maxlen == 40 and list(gate._window) == [stamp]


async def test_a_sync_removed_then_added_again_counts_on(tmp_path: Path) -> None:
    runner, url, state = await sim()
    config = two_syncs(tmp_path, ("a", url), ("", ""))
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            status, _ = await post_events(session, daemon.url, [event(1), event(2)])
            assert status == 200
            await eventually(lambda: len(state.events) == 2)
            delivered = daemon.pipeline.deliveries[0].stats.delivered[Endpoint.TRACK_BULK.value]
            routed = daemon.pipeline.intake.stats[0].events_routed
            assert delivered == 2 and routed == 2
            await daemon.pipeline.apply_config(msgspec.structs.replace(config, syncs=[]))
            await eventually(lambda: not daemon.pipeline.fleet.draining)
            assert daemon.pipeline.snapshot().syncs == []
            await daemon.pipeline.apply_config(config)
            status, _ = await post_events(session, daemon.url, [event(3)])
            assert status == 200
            await eventually(lambda: len(state.events) == 3)
            again = daemon.pipeline.deliveries[0]
            await eventually(lambda: again.stats.delivered[Endpoint.TRACK_BULK.value] == 3)
            assert daemon.pipeline.intake.stats[0].events_routed == 3
        await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
