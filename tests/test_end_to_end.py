"""The product end to end: the official Amplitude SDK -> daemon -> simulated Iterable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify

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

SYNC_SETTINGS: dict[str, Any] = {
    "mappings": {
        "email": "user_properties.email",
        "user_id": "user_id",
        "campaign_id": "event_properties.campaign_id",
        "template_id": "event_properties.template_id",
        "fields": {"user_properties.plan": "planName"},
    },
    "events": {
        "select": ["Purchase", "Viewed"],
        "where": [{"field": "event_properties.price", "op": "greater than", "value": 10}],
        "event_properties": ["price", "sku"],
        "user_properties": ["plan"],
    },
    "users": {"user_properties": ["plan", "city"]},
}


def run_sdk(
    url: str, calls: list[tuple[str, Any, Any]], route: str = "/2/httpapi"
) -> list[tuple[str, int]]:
    """Drive the real SDK (threaded, blocking) and collect every callback's code."""
    results: list[tuple[str, int]] = []

    def callback(event: BaseEvent, code: int, message: str | None = None) -> None:
        results.append((event.event_type, code))

    client = Amplitude(
        AMPLITUDE_KEY,
        Config(
            server_url=f"{url}{route}",
            use_batch=route == "/batch",
            flush_queue_size=50,
            flush_interval_millis=100,
            callback=callback,
        ),
    )
    for kind, first, second in calls:
        if kind == "identify":
            client.identify(first, second)
        else:
            client.track(first)
    client.flush()
    client.shutdown()
    return results


@pytest.mark.parametrize("route", ["/2/httpapi", "/batch"])
async def test_sdk_identify_then_events_reach_iterable_as_configured(
    tmp_path: Path, route: str
) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(
        build_simulator_app(
            SimulatorConfig(require_user_first=True, track_bulk_per_second=100), state
        )
    )
    config = make_config(tmp_path, sim_url, durability="journal", **SYNC_SETTINGS)
    daemon = await Daemon(config).start()
    try:
        user = "sdk-user-0001"
        identify = Identify()
        identify.set("email", "grace@example.com")
        identify.set("plan", "enterprise")
        identify.set("city", "Lisbon")
        identify.set("favorite_color", "teal")  # not selected: never sent
        calls: list[tuple[str, Any, Any]] = [("identify", identify, EventOptions(user_id=user))]
        calls.append(
            (
                "track",
                BaseEvent(
                    "Purchase",
                    user_id=user,
                    insert_id="purchase-1",
                    time=1_700_000_123_456,
                    event_properties={
                        "price": 42.5,
                        "sku": "SKU-1",
                        "color": "red",
                        "campaign_id": "1234",
                        "template_id": 99,
                    },
                ),
                None,
            )
        )
        calls.append(
            (
                "track",
                BaseEvent(
                    "Purchase", user_id=user, insert_id="cheap", event_properties={"price": 3}
                ),
                None,
            )
        )
        calls.append(("track", BaseEvent("Logged In", user_id=user, insert_id="other"), None))
        # A device-only user with no email: counted, never sent.
        calls.append(
            (
                "track",
                BaseEvent(
                    "Purchase",
                    device_id="device-without-user",
                    insert_id="anon",
                    event_properties={"price": 50},
                ),
                None,
            )
        )
        results = await asyncio.to_thread(run_sdk, daemon.url, calls, route)
        assert results and all(code == 200 for _, code in results), results

        purchase_id = iterable_id({"user_id": user, "insert_id": "purchase-1"})
        await eventually(lambda: purchase_id in state.event_ids, timeout=20)
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()

    (sent,) = [e for e in state.events if e["id"] == purchase_id]
    assert sent == {
        "eventName": "Purchase",
        "id": purchase_id,
        "createdAt": 1_700_000_123,
        # One identifier per event (the spec), the email in an email-based project.
        "email": "grace@example.com",
        "campaignId": 1234,
        "templateId": 99,
        "dataFields": {
            "price": 42.5,
            "sku": "SKU-1",
            "plan": "enterprise",
            "planName": "enterprise",
        },
    }
    assert state.event_ids == {purchase_id}  # the filter and the selection kept the rest out
    (update,) = state.users
    assert update["email"] == "grace@example.com" and update["userId"] == user
    assert update["dataFields"] == {
        "plan": "enterprise",
        "city": "Lisbon",
        "planName": "enterprise",
    }
    stats = daemon.pipeline.intake.stats[0]
    assert stats.skipped["no_identity"] == 1
    assert stats.skipped["filtered"] == 1
    assert stats.skipped["not_selected"] == 1


async def test_users_update_only_when_a_selected_property_changes(tmp_path: Path) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, **SYNC_SETTINGS)
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:

            def ident(props: dict[str, Any]) -> dict[str, Any]:
                return {
                    "event_type": "$identify",
                    "user_id": "user-12345",
                    "user_properties": props,
                }

            await post_events(
                session, daemon.url, [ident({"$set": {"email": "a@b.io", "plan": "pro"}})]
            )
            await eventually(lambda: len(state.users) == 1)
            # Same values again, and an unselected property: nothing to send.
            await post_events(session, daemon.url, [ident({"$set": {"plan": "pro", "shoe": 44}})])
            # A plain event with user_properties that change a selected one: one update.
            await post_events(
                session,
                daemon.url,
                [
                    {
                        "event_type": "Viewed",
                        "user_id": "user-12345",
                        "user_properties": {"city": "Oslo"},
                    }
                ],
            )
            await eventually(lambda: len(state.users) == 2)
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    assert state.users[1]["dataFields"] == {"plan": "pro", "city": "Oslo", "planName": "pro"}


async def test_profiles_survive_a_restart_in_journal_mode(tmp_path: Path) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, durability="journal", **SYNC_SETTINGS)
    try:
        async with aiohttp.ClientSession() as session:
            daemon = await Daemon(config).start()
            status, _ = await post_events(
                session,
                daemon.url,
                [
                    {
                        "event_type": "$identify",
                        "user_id": "user-77777",
                        "user_properties": {
                            "$set": {"email": "kept@example.com", "plan": "team"},
                            "$add": {"logins": 2},
                        },
                    }
                ],
            )
            assert status == 200
            assert await daemon.drain_and_stop()

            again = await Daemon(config).start()
            await post_events(
                session,
                again.url,
                [
                    {
                        "event_type": "Purchase",
                        "user_id": "user-77777",
                        "insert_id": "after-restart",
                        "event_properties": {"price": 11},
                    }
                ],
            )
            after_restart = iterable_id({"user_id": "user-77777", "insert_id": "after-restart"})
            await eventually(lambda: after_restart in state.event_ids)
            profile = again.pipeline.intake.profiles.get("user-77777")
            told = {"$iterable:test": "kept@example.com"}  # what Iterable was told, kept too
            assert profile == {"email": "kept@example.com", "plan": "team", "logins": 2, **told}
            assert await again.drain_and_stop()
    finally:
        await runner.cleanup()
    (sent,) = [e for e in state.events if e["id"] == after_restart]
    assert sent["email"] == "kept@example.com"


@pytest.mark.parametrize("durability", ["memory", "journal"])
async def test_a_device_profile_carries_over_to_the_user_who_logs_in_on_it(
    tmp_path: Path, durability: str
) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, durability=durability, **SYNC_SETTINGS)
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            # Before sign-up: only a device, and it gives its email.
            await post_events(
                session,
                daemon.url,
                [
                    {
                        "event_type": "$identify",
                        "device_id": "device-anon-1",
                        "user_properties": {
                            "$set": {"email": "early@example.com", "plan": "trial"}
                        },
                    },
                ],
            )
            # After sign-up: the SDK sends both ids; the event itself carries no email.
            await post_events(
                session,
                daemon.url,
                [
                    {
                        "event_type": "Purchase",
                        "user_id": "user-signed-up",
                        "device_id": "device-anon-1",
                        "insert_id": "first-purchase",
                        "event_properties": {"price": 20},
                    },
                ],
            )
            first = iterable_id(
                {
                    "user_id": "user-signed-up",
                    "device_id": "device-anon-1",
                    "insert_id": "first-purchase",
                }
            )
            await eventually(lambda: first in state.event_ids)
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    (sent,) = [e for e in state.events if e["id"] == first]
    assert sent["email"] == "early@example.com" and "userId" not in sent
    created = [u for u in state.users if u.get("userId") == "user-signed-up"]
    assert created and created[0]["dataFields"]["plan"] == "trial"
