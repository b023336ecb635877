"""Identity as Iterable defines it, end to end against the simulator on real sockets:
project types, email changes, users that become visible late, one user per request,
and bounded bisecting."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.errors import ConfigError, FailureKind
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import DeadLetter, dead_letter_path, read_letters
from tests.harness import Daemon, eventually, make_config, post_events, serve

USER = "user-00001"


def identify(user: str, **properties: Any) -> dict[str, Any]:
    return {"event_type": "$identify", "user_id": user, "user_properties": {"$set": properties}}


def bought(user: str, insert_id: str) -> dict[str, Any]:
    return {"event_type": "Buy", "user_id": user, "insert_id": insert_id}


def letters(daemon: Daemon) -> list[DeadLetter]:
    path = dead_letter_path(daemon.config.storage.path, "test")
    return [x for x in read_letters(path) if isinstance(x, DeadLetter)]


async def start(
    tmp_path: Path, sim: SimulatorConfig, durability: str = "memory", **sync: Any
) -> tuple[SimulatorState, Any, Daemon]:
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(sim, state))
    daemon = await Daemon(make_config(tmp_path, url, durability=durability, **sync)).start()
    return state, runner, daemon


@pytest.mark.parametrize("project_type", ["email-based", "userid-based", "hybrid"])
async def test_an_email_change_leaves_one_user_with_the_new_email_and_all_its_events(
    tmp_path: Path, project_type: str
) -> None:
    sim = SimulatorConfig(project_type=project_type, require_user_first=True)
    state, runner, daemon = await start(tmp_path, sim, project_type=project_type)
    try:
        async with aiohttp.ClientSession() as session:
            first = [identify(USER, email="old@example.com", plan="pro"), bought(USER, "b-1")]
            assert (await post_events(session, daemon.url, first))[0] == 200
            changed = [identify(USER, email="new@example.com"), bought(USER, "b-2")]
            assert (await post_events(session, daemon.url, changed))[0] == 200
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    (person,) = state.people  # no second user
    assert person.email == "new@example.com" and person.userId == USER
    assert len(person.event_ids) == 2 and len(state.event_ids) == 2  # both events, on it
    assert person.fields.get("plan") == "pro"
    assert not letters(daemon) and not state.failed
    if project_type == "email-based":
        assert state.email_changes == [("old@example.com", "new@example.com")]
        # An event carries one identifier; in email-based projects the email.
        assert all("userId" not in event for event in state.events)
    else:
        # The user found by its userId gets the new email from a bulkUpdate.
        assert not state.email_changes
        assert all("email" not in event for event in state.events)


async def test_the_identity_iterable_was_told_survives_a_restart(tmp_path: Path) -> None:
    sim = SimulatorConfig(require_user_first=True)
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(sim, state))
    config = make_config(tmp_path, url, durability="journal")
    try:
        async with aiohttp.ClientSession() as session:
            daemon = await Daemon(config).start()
            first = [identify(USER, email="old@example.com"), bought(USER, "b-1")]
            assert (await post_events(session, daemon.url, first))[0] == 200
            assert await daemon.drain_and_stop()
            daemon = await Daemon(config).start()  # a new process's view: profiles on disk
            changed = [identify(USER, email="new@example.com"), bought(USER, "b-2")]
            assert (await post_events(session, daemon.url, changed))[0] == 200
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    assert state.email_changes == [("old@example.com", "new@example.com")]
    (person,) = state.people
    assert person.email == "new@example.com" and len(person.event_ids) == 2


async def test_events_right_after_their_users_creation_wait_out_the_20_s_it_hides(
    tmp_path: Path,
) -> None:
    sim = SimulatorConfig(require_user_first=True, user_visible_after_seconds=20.0)
    state, runner, daemon = await start(
        tmp_path, sim, delivery={"not_found_backoff_max_seconds": 2.0, "max_retry_seconds": 0}
    )
    users = [f"user-{n:05d}" for n in range(20)]
    try:
        async with aiohttp.ClientSession() as session:
            events = []
            for user in users:
                events += [identify(user, email=f"{user}@example.com"), bought(user, user)]
            assert (await post_events(session, daemon.url, events))[0] == 200
            # Bounded: 20 s of hiding, then retries at most 2 s apart.
            await eventually(lambda: len(state.event_ids) == len(users), timeout=90)
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    assert state.failed[("events/trackBulk", "notFoundEmails")] > 0  # it did hide them
    assert not letters(daemon)
    assert daemon.pipeline.deliveries[0].stats.dead.total() == 0
    assert len(state.events) >= len(users) and len(state.people) == len(users)


@pytest.mark.parametrize("n", [64, 500])
async def test_a_project_wide_400_costs_at_most_2_log2_n_plus_k_requests(
    tmp_path: Path, n: int
) -> None:
    sim = SimulatorConfig(unique_fields_limit_exceeded=True)
    state, runner, daemon = await start(
        tmp_path, sim, users={"enabled": False}, delivery={"linger_ms": 300}
    )
    try:
        async with aiohttp.ClientSession() as session:
            events = [bought(USER, f"b-{i}") for i in range(n)]
            first = [identify(USER, email="a@example.com")]
            assert (await post_events(session, daemon.url, first + events))[0] == 200
            delivery = daemon.pipeline.deliveries[0]
            await eventually(lambda: delivery.stats.dead.total() == n)
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    requests = [r for r in state.requests if r.endpoint == "events/trackBulk"]
    extra = daemon.config.syncs[0].delivery.bisect_extra_requests
    assert 1 <= len(requests) <= 2 * math.ceil(math.log2(n)) + extra
    kinds = {letter.kind for letter in letters(daemon)}
    assert kinds == {FailureKind.UNIQUE_FIELDS_LIMIT.value}
    assert len(letters(daemon)) == n  # none lost


async def test_no_bulk_update_request_carries_one_user_twice(tmp_path: Path) -> None:
    sim = SimulatorConfig()
    state, runner, daemon = await start(tmp_path, sim, delivery={"linger_ms": 300})
    users = [f"user-{n:05d}" for n in range(5)]
    try:
        async with aiohttp.ClientSession() as session:
            events = [
                identify(user, email=f"{user}@example.com", plan=f"plan-{step}")
                for step in range(10)
                for user in users
            ]
            events.sort(key=lambda event: event["user_id"])  # consecutive updates per user
            assert (await post_events(session, daemon.url, events))[0] == 200
            assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    assert state.users_twice_in_one_request == 0
    assert len(state.people) == 5
    for user in users:  # later values won
        assert state.profile(email=f"{user}@example.com") == {"plan": "plan-9"}
    delivery = daemon.pipeline.deliveries[0]
    assert delivery.stats.delivered["users/bulkUpdate"] == 50  # every update acknowledged
    assert sum(r.items for r in state.requests if r.endpoint == "users/bulkUpdate") < 50


def test_the_user_id_mapping_turns_off_except_where_the_project_needs_it(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:1", mappings={"user_id": ""})
    assert config.syncs[0].mappings.user_id == ""
    with pytest.raises(ConfigError) as error:
        make_config(
            tmp_path,
            "http://127.0.0.1:1",
            project_type="userid-based",
            mappings={"user_id": ""},
        )
    assert error.value.path == "syncs[0].mappings.user_id"
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, "http://127.0.0.1:1", project_type="user-id")
    assert error.value.path == "syncs[0].project_type"
