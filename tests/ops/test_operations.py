"""Operations: /metrics moves with the data, /readyz during a drain, keys kept out of logs."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.config import ConfigError, parse_config
from forwarder.daemon import serve as serve_daemon
from forwarder.ops.logs import JsonFormatter
from forwarder.ops.systemd import notify, watchdog_interval
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.harness import Daemon, eventually, iterable_id, make_config, post_events, serve


async def scrape(
    session: aiohttp.ClientSession, url: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_accepted_filtered_skipped_forwarded_and_dead(tmp_path: Path) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(
        tmp_path,
        sim_url,
        events={
            "select": ["Purchase"],
            "where": [{"field": "event_properties.price", "op": "greater than", "value": 5}],
        },
    )
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            before = await scrape(session, daemon.admin_url)
            assert value(before, "forwarder_events_total", outcome="accepted") == 0
            events = [
                {
                    "event_type": "$identify",
                    "user_id": "user-00001",
                    "user_properties": {"$set": {"email": "a@x.io"}},
                },
                {
                    "event_type": "$identify",
                    "user_id": "user-00002",
                    "user_properties": {"$set": {"email": "b@invalid.test"}},
                },
                {
                    "event_type": "Purchase",
                    "user_id": "user-00001",
                    "insert_id": "p1",
                    "event_properties": {"price": 9},
                },
                {
                    "event_type": "Purchase",
                    "user_id": "user-00001",
                    "insert_id": "p2",
                    "event_properties": {"price": 1},
                },
                {"event_type": "Viewed", "user_id": "user-00001", "insert_id": "v1"},
                {
                    "event_type": "Purchase",
                    "device_id": "device-0001",
                    "insert_id": "p3",
                    "event_properties": {"price": 9},
                },
                {
                    "event_type": "Purchase",
                    "user_id": "user-00002",
                    "insert_id": "p4",
                    "event_properties": {"price": 9},
                },
            ]
            status, _ = await post_events(session, daemon.url, events)
            assert status == 200
            status, _ = await post_events(session, daemon.url, [{"event_type": "x"}])
            assert status == 400
            await eventually(lambda: iterable_id(events[2]) in state.event_ids)
            await daemon.pipeline.drain(10)
            after = await scrape(session, daemon.admin_url)
    finally:
        await daemon.drain_and_stop()
        await runner.cleanup()
    sync = "test"
    assert value(after, "forwarder_events_total", outcome="accepted") == len(events)
    assert value(after, "forwarder_requests_rejected_total", reason="invalid_events") == 1
    assert value(after, "forwarder_http_requests_total", route="/2/httpapi", status="200") == 1
    assert value(after, "forwarder_http_requests_total", route="/2/httpapi", status="400") == 1
    assert value(after, "forwarder_sync_events_skipped_total", sync=sync, reason="filtered") == 1
    assert (
        value(after, "forwarder_sync_events_skipped_total", sync=sync, reason="not_selected") == 1
    )
    assert value(after, "forwarder_sync_events_skipped_total", sync=sync, reason="no_identity") == 1
    assert (
        value(after, "forwarder_sync_items_forwarded_total", sync=sync, endpoint="events/trackBulk")
        == 1
    )
    assert (
        value(after, "forwarder_sync_items_forwarded_total", sync=sync, endpoint="users/bulkUpdate")
        == 1
    )
    # b@invalid.test: its user update and its event are refused by Iterable.
    assert (
        value(after, "forwarder_sync_dead_letters_total", sync=sync, reason="invalid_identity") == 2
    )
    assert (
        value(
            after,
            "forwarder_sync_iterable_responses_total",
            sync=sync,
            endpoint="events/trackBulk",
            status="200",
        )
        >= 1
    )
    assert (
        value(
            after,
            "forwarder_sync_upstream_latency_seconds_count",
            sync=sync,
            endpoint="events/trackBulk",
        )
        >= 1
    )
    assert value(after, "forwarder_sync_queue_items", sync=sync) == 0


async def test_readyz_is_off_during_a_drain_and_new_ingest_gets_429(tmp_path: Path) -> None:
    sim_config = SimulatorConfig(down_until=time.monotonic() + 3600)  # the drain cannot finish
    runner, sim_url = await serve(build_simulator_app(sim_config))
    port = _free_port()
    config = make_config(tmp_path, sim_url)
    config.server.listen = f"127.0.0.1:{port}"
    admin_port = _free_port()
    config.server.admin_listen = f"127.0.0.1:{admin_port}"
    config.server.drain_timeout_seconds = 1.5
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve_daemon(config, stop))
    url = f"http://127.0.0.1:{port}"
    admin_url = f"http://127.0.0.1:{admin_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready_status(at: str = url) -> int:
                try:
                    async with session.get(at + "/readyz") as response:
                        return response.status
                except aiohttp.ClientError:
                    return -1

            await eventually(lambda: _is(ready_status(), 200))
            status, _ = await post_events(
                session,
                url,
                [
                    {
                        "event_type": "E",
                        "user_id": "user-00001",
                        "user_properties": {"email": "a@b.io"},
                    }
                ],
            )
            assert status == 200
            stop.set()
            await eventually(lambda: _is(ready_status(), 503))
            # The admin port says the same, and stays up through the drain.
            assert await ready_status(admin_url) == 503
            for at in (url, admin_url):
                async with session.get(at + "/healthz") as response:
                    assert response.status == 200
            status, body = await post_events(
                session, url, [{"event_type": "E", "user_id": "user-00001"}]
            )
            assert status == 429 and body["throttled_events"] == [0]
        assert await asyncio.wait_for(daemon, 10) == 0
    finally:
        stop.set()
        await runner.cleanup()


async def _is(awaitable: asyncio.Future[int] | object, expected: int) -> bool:
    return await awaitable == expected  # type: ignore[misc]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_api_keys_never_reach_logs_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-0123456789abcdef0123456789abcdef"
    # Through config: an error message about a sync never repeats its key.
    with pytest.raises(ConfigError) as error:
        parse_config(
            {
                "server": {"api_keys": ["k"]},
                "syncs": [{"name": "a", "api_key": "${KEY}", "region": "mars"}],
            },
            env={"KEY": secret},
        )
    assert secret not in str(error.value)
    # Through delivery: Iterable refuses the key; the loud log line masks it.
    sim = SimulatorConfig(api_keys=frozenset({"another-key"}))
    runner, sim_url = await serve(build_simulator_app(sim))
    config = make_config(tmp_path, sim_url, api_key=secret)
    caplog.set_level(logging.DEBUG)
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            await post_events(
                session,
                daemon.url,
                [
                    {
                        "event_type": "$identify",
                        "user_id": "user-00001",
                        "user_properties": {"email": "a@b.io"},
                    }
                ],
            )
            # And a client sending it as its Amplitude key gets an error that hides it.
            async with session.post(
                daemon.url + "/2/httpapi",
                json={"api_key": secret, "events": [{"event_type": "e", "user_id": "user-1"}]},
            ) as response:
                body = await response.text()
            assert response.status == 400 and secret not in body
            await eventually(lambda: daemon.pipeline.deliveries[0].pause.reason is not None)
            async with session.get(daemon.admin_url + "/status") as response:
                assert secret not in await response.text()
    finally:
        daemon.pipeline.deliveries[0].lanes.drain_all()
        await daemon.drain_and_stop(timeout=1)
        await runner.cleanup()
    formatter = JsonFormatter()
    rendered = "\n".join(formatter.format(record) for record in caplog.records)
    assert "API key" in rendered  # the pause was logged loudly...
    assert secret not in rendered  # ...without the key


def test_notify_sends_datagrams_and_watchdog_interval(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert sock.recv(100) == b"READY=1"
    assert not notify("READY=1", {})
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
