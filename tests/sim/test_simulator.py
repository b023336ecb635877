"""The fake Iterable on a real socket: auth, limits, caps, partial failures, faults, stats."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from forwarder.deliver.outcome import read_outcome
from forwarder.iterable import Endpoint, TrackEvent, UserUpdate, assemble_body
from forwarder.sim import (
    STATE_KEY,
    SimulatorConfig,
    SimulatorState,
    build_simulator_app,
    run_simulator,
)

KEY = "test-key"
TRACK, UPDATE = Endpoint.TRACK_BULK, Endpoint.BULK_UPDATE


class Sim:
    """A running simulator and a client for it."""

    def __init__(
        self,
        url: str,
        config: SimulatorConfig,
        state: SimulatorState,
        session: aiohttp.ClientSession,
    ):
        self.url, self.config, self.state, self.session = url, config, state, session

    async def post(
        self, endpoint: Endpoint, items: list[Any], key: str | None = KEY, raw: bytes | None = None
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        data = (
            raw
            if raw is not None
            else assemble_body(endpoint, [msgspec.json.encode(i) for i in items])
        )
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Api-Key"] = key
        async with self.session.post(
            f"{self.url}/api/{endpoint.value}", data=data, headers=headers
        ) as r:
            return r.status, msgspec.json.decode(await r.read()), r.headers

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sim/stats") as r:
            assert r.status == 200
            return msgspec.json.decode(await r.read())  # type: ignore[no-any-return]

    async def faults(self, **change: Any) -> tuple[int, Any]:
        async with self.session.post(f"{self.url}/_sim/faults", json=change) as r:
            return r.status, await r.json()


StartSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(**knobs: Any) -> Sim:
        config = SimulatorConfig(
            **{"track_bulk_per_second": 1000, "bulk_update_per_second": 1000, **knobs}
        )
        state = SimulatorState()
        app = build_simulator_app(config, state)
        assert app[STATE_KEY] is state
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return Sim(f"http://{host}:{port}", config, state, session)

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()


def event(n: int, email: str | None = None, **extra: Any) -> TrackEvent:
    return TrackEvent(
        eventName=extra.pop("eventName", "Purchase"),
        id=f"ev-{n}",
        createdAt=1_700_000_000 + n,
        email=email if email is not None else f"u{n}@example.com",
        dataFields=extra.pop("dataFields", {"price": n}),
        **extra,
    )


def user(n: int, email: str | None = None, **extra: Any) -> UserUpdate:
    return UserUpdate(email=email if email is not None else f"u{n}@example.com", **extra)


# --- auth -----------------------------------------------------------------------------


async def test_the_api_key_is_checked(start_sim: StartSim) -> None:
    sim = await start_sim(api_keys=frozenset({KEY}))
    for key in (None, "", "wrong"):
        status, answer, _ = await sim.post(TRACK, [event(0)], key=key)
        assert status == 401
        assert answer == {"msg": "Invalid API key", "code": "BadApiKey", "params": None}
    assert (await sim.post(TRACK, [event(0)]))[0] == 200
    assert sim.state.event_ids == {"ev-0"}
    # None accepts any non-empty key; the config is read live.
    sim.config.api_keys = None
    assert (await sim.post(UPDATE, [user(1)], key="anything"))[0] == 200
    assert (await sim.post(UPDATE, [user(1)], key=""))[0] == 401


# --- rate limits ----------------------------------------------------------------------


async def test_past_the_rate_the_window_answers_429(start_sim: StartSim) -> None:
    sim = await start_sim(track_bulk_per_second=3, bulk_update_per_second=2, send_retry_after=True)
    statuses = [(await sim.post(TRACK, [event(n)]))[0] for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    status, answer, headers = await sim.post(TRACK, [event(9)])
    assert status == 429 and answer["code"] == "RateLimitExceeded"
    assert headers["Retry-After"] == "1"
    # Windows are per (key, endpoint).
    assert (await sim.post(TRACK, [event(10)], key="other-project"))[0] == 200
    assert [(await sim.post(UPDATE, [user(n)]))[0] for n in range(3)] == [200, 200, 429]
    assert sim.state.rate_limited == 4
    stats = await sim.stats()
    assert stats["rate_limited"] == 4
    assert stats["requests"]["events/trackBulk"] == {"200": 4, "429": 3}
    # Every arrival counts for the pacing figure, refused or not.
    assert stats["max_requests_in_one_second"] == {"events/trackBulk": 6, "users/bulkUpdate": 3}
    assert sim.state.event_ids == {"ev-0", "ev-1", "ev-2", "ev-10"}


def test_the_window_is_strict_and_slides_by_arrival_time() -> None:
    state = SimulatorState()

    def admit(at: float) -> float | None:
        return state.admit(KEY, TRACK, at, 2)

    assert admit(10.0) is None and admit(10.5) is None
    assert admit(10.999) == pytest.approx(0.001)  # two already in (9.999, 10.999]
    assert admit(11.0) is None  # 10.0 left the window: exactly 1.0 s old
    assert admit(11.2) == pytest.approx(0.3)
    assert admit(11.5) is None
    # Refused requests never entered the window.
    assert list(state._admitted[(KEY, TRACK.value)]) == [11.0, 11.5]
    # Fractional rates: 2.5 requests/s admits 3 in a window.
    assert [state.admit("k", UPDATE, 20 + i / 10, 2.5) is None for i in range(4)] == [
        True,
        True,
        True,
        False,
    ]


# --- partial failures, read back with read_outcome ------------------------------------


async def test_partial_failures_have_iterables_shape(start_sim: StartSim) -> None:
    sim = await start_sim(disallowed_event_names=frozenset({"Blocked"}))
    items = [
        event(0),
        event(1, email="a@invalid.test"),
        event(2, email="b@forgotten.test"),
        event(3, email="no-at-sign"),
        event(4, email="", userId="trailing "),
        event(5, eventName="Blocked"),
        event(6, email="", userId="user-6"),
    ]
    status, answer, _ = await sim.post(TRACK, items)
    assert status == 200
    assert answer == {
        "successCount": 2,
        "failCount": 5,
        "createdFields": [],
        "filteredOutFields": [],
        "disallowedEventNames": ["Blocked"],
        "failedUpdates": {
            "forgottenEmails": ["b@forgotten.test"],
            "forgottenUserIds": [],
            "invalidEmails": ["a@invalid.test", "no-at-sign"],
            "invalidUserIds": ["trailing "],
            "notFoundEmails": [],
            "notFoundUserIds": [],
        },
        "invalidEmails": ["a@invalid.test", "no-at-sign"],
        "invalidUserIds": ["trailing "],
    }
    outcome = read_outcome(TRACK, status, {}, msgspec.json.encode(answer), items)
    assert outcome.delivered == [0, 6]
    assert [i for i, _ in outcome.dead] == [1, 2, 3, 4, 5]
    assert [e["id"] for e in sim.state.events] == ["ev-0", "ev-6"]
    assert (await sim.stats())["items_failed"]["events/trackBulk"] == {
        "disallowedEventNames": 1,
        "forgottenEmails": 1,
        "invalidEmails": 2,
        "invalidUserIds": 1,
    }


async def test_events_of_unknown_users_are_not_found_until_their_bulk_update(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(require_user_first=True)
    early = [event(0), event(1, email="", userId="uid-1")]
    status, answer, _ = await sim.post(TRACK, early)
    assert answer["failedUpdates"]["notFoundEmails"] == ["u0@example.com"]
    assert answer["failedUpdates"]["notFoundUserIds"] == ["uid-1"]
    outcome = read_outcome(TRACK, status, {}, msgspec.json.encode(answer), early)
    assert outcome.not_found == [0, 1]  # Iterable's lag: retried, not dead

    status, answer, _ = await sim.post(
        # A userId alone creates a user in an email-based project only with preferUserId.
        UPDATE,
        [user(0, email="U0@Example.com"), user(1, email="", userId="uid-1", preferUserId=True)],
    )
    assert answer["successCount"] == 2
    status, answer, _ = await sim.post(TRACK, early)
    assert (answer["successCount"], answer["failCount"]) == (2, 0)
    # Turned off at run time, unknown users' events are taken again.
    assert (await sim.faults(require_user_first=False))[0] == 200
    assert (await sim.post(TRACK, [event(7)]))[1]["successCount"] == 1


async def test_bulk_update_merges_profiles_by_email_and_user_id(start_sim: StartSim) -> None:
    sim = await start_sim()
    await sim.post(
        UPDATE, [user(0, userId="uid-0", dataFields={"plan": "free", "prefs": {"a": 1}})]
    )
    await sim.post(
        UPDATE,
        [
            UserUpdate(
                userId="uid-0",
                dataFields={"prefs": {"b": 2}, "city": "Oslo"},
                mergeNestedObjects=True,
            ),
            UserUpdate(email="U0@EXAMPLE.COM", dataFields={"plan": "pro"}),
            user(9, email="bad@invalid.test"),
        ],
    )
    profile = sim.state.profile(email="u0@example.com")
    assert profile == {"plan": "pro", "prefs": {"a": 1, "b": 2}, "city": "Oslo"}
    assert sim.state.profile(user_id="uid-0") is profile
    assert len(sim.state.users) == 3 and sim.state.users[1]["mergeNestedObjects"] is True
    # Without mergeNestedObjects a top-level object is overwritten.
    await sim.post(UPDATE, [UserUpdate(userId="uid-0", dataFields={"prefs": {"c": 3}})])
    assert profile["prefs"] == {"c": 3}
    stats = await sim.stats()
    assert stats["users_received"] == 4 and stats["known_users"] == 1
    assert stats["items_failed"]["users/bulkUpdate"] == {"invalidEmails": 1}


# --- refused requests ------------------------------------------------------------------


async def test_a_wrong_type_is_a_400_naming_the_item_like_iterable(start_sim: StartSim) -> None:
    sim = await start_sim()
    good = [msgspec.to_builtins(event(n)) for n in range(3)]
    bad = [good[0], {**good[1], "createdAt": "yesterday"}, good[2]]
    status, answer, _ = await sim.post(TRACK, [], raw=msgspec.json.encode({"events": bad}))
    assert status == 400 and answer["code"] == "BadJsonBody"
    assert answer["params"] == {
        "obj.events[1].createdAt": [{"msg": ["error.expected.jsnumber"], "args": []}]
    }
    items = [event(n) for n in range(3)]
    outcome = read_outcome(TRACK, status, {}, msgspec.json.encode(answer), items)
    assert [i for i, _ in outcome.dead] == [1] and outcome.resend == [0, 2]
    assert not sim.state.event_ids  # the whole request was refused

    cases: list[tuple[Endpoint, Any, str]] = [
        (TRACK, {"events": [good[0], {"id": "x", "email": "a@b.c"}]}, "obj.events[1].eventName"),
        (
            TRACK,
            {"events": [good[0], {"eventName": "E", "id": "x"}]},
            "obj.events[1]",
        ),  # no identity
        (TRACK, {"events": [{**good[0], "dataFields": [1, 2]}]}, "obj.events[0].dataFields"),
        (
            UPDATE,
            {"users": [{"email": "a@b.c"}, {"email": "b@b.c", "dataFields": "x"}]},
            "obj.users[1].dataFields",
        ),
        (UPDATE, {"users": [{"dataFields": {}}]}, "obj.users[0]"),
        (TRACK, {"items": []}, "obj.events"),
    ]
    for endpoint, payload, path in cases:
        status, answer, _ = await sim.post(endpoint, [], raw=msgspec.json.encode(payload))
        assert status == 400 and list(answer["params"]) == [path], (payload, answer)
    status, answer, _ = await sim.post(TRACK, [], raw=b'{"events": [')
    assert status == 400 and answer["code"] == "BadJsonBody" and answer["params"] is None


async def test_a_field_changing_type_is_refused_when_asked(start_sim: StartSim) -> None:
    sim = await start_sim(check_field_types=True)
    assert (await sim.post(TRACK, [event(0, dataFields={"price": 1, "sku": "A"})]))[0] == 200
    # Another event name has its own field types.
    assert (await sim.post(TRACK, [event(1, eventName="Refund", dataFields={"price": "1"})]))[
        0
    ] == 200
    items = [event(2, dataFields={"price": 2}), event(3, dataFields={"price": "three"})]
    status, answer, _ = await sim.post(TRACK, items)
    assert status == 400 and answer["code"] == "RequestFieldsTypesMismatched"
    assert list(answer["params"]) == ["obj.events[1].dataFields.price"]
    outcome = read_outcome(TRACK, status, {}, msgspec.json.encode(answer), items)
    assert [i for i, _ in outcome.dead] == [1] and outcome.resend == [0]
    # Users: per project, and within one request too.
    status, answer, _ = await sim.post(
        UPDATE, [user(0, dataFields={"age": 3}), user(1, dataFields={"age": "3"})]
    )
    assert status == 400 and list(answer["params"]) == ["obj.users[1].dataFields.age"]


async def test_caps_on_bytes_and_items(start_sim: StartSim) -> None:
    sim = await start_sim(
        max_request_bytes=2_000, max_events_per_request=5, max_users_per_request=2
    )
    status, answer, _ = await sim.post(
        TRACK, [event(n, dataFields={"pad": "x" * 100}) for n in range(20)]
    )
    assert status == 413 and answer["code"] == "BatchTooLarge"
    status, answer, _ = await sim.post(TRACK, [event(n) for n in range(6)])
    assert status == 400 and answer["code"] == "BatchTooLarge"
    assert read_outcome(
        TRACK, status, {}, msgspec.json.encode(answer), [event(n) for n in range(6)]
    ).split
    assert (await sim.post(UPDATE, [user(n) for n in range(3)]))[0] == 400
    assert (await sim.post(TRACK, [event(n) for n in range(5)]))[0] == 200
    # Far past the cap (beyond aiohttp's own limit): still our 413, still counted.
    huge = b'{"events": [' + b" " * 5_000_000 + b"]}"
    assert (await sim.post(TRACK, [], raw=huge))[0] == 413
    stats = await sim.stats()
    # What was seen, not only what was taken: a sender over a cap shows here.
    assert stats["max_bytes_in_one_request"]["events/trackBulk"] == len(huge)
    assert stats["max_items_in_one_request"] == {"events/trackBulk": 6, "users/bulkUpdate": 3}


# --- faults ----------------------------------------------------------------------------


async def test_injected_errors_latency_and_downtime(start_sim: StartSim) -> None:
    sim = await start_sim(seed=1)
    assert await sim.faults(error_rate=1.0) == (
        200,
        {
            "error_rate": 1.0,
            "latency_ms": 0.0,
            "down_for_seconds": 0.0,
            "require_user_first": False,
        },
    )
    status, answer, _ = await sim.post(TRACK, [event(0)])
    assert status == 500 and answer["code"] == "GenericError"
    await sim.faults(error_rate=0.5)
    statuses = {(await sim.post(TRACK, [event(n)]))[0] for n in range(20)}
    assert statuses == {200, 500}  # seeded: both happen

    await sim.faults(error_rate=0.0, latency_ms=60)
    started = time.perf_counter()
    assert (await sim.post(TRACK, [event(1)]))[0] == 200
    assert time.perf_counter() - started >= 0.055

    await sim.faults(latency_ms=0, down_for_seconds=30)
    status, answer, _ = await sim.post(TRACK, [event(2)])
    assert status == 503
    assert read_outcome(TRACK, status, {}, msgspec.json.encode(answer), [event(2)]).retry == [0]
    sim.config.send_retry_after = True
    assert int((await sim.post(TRACK, [event(2)]))[2]["Retry-After"]) in (29, 30)
    await sim.faults(down_for_seconds=0)
    assert (await sim.post(TRACK, [event(2)]))[0] == 200
    stats = await sim.stats()
    assert stats["rate_limited"] == 0 and stats["requests"]["events/trackBulk"]["503"] == 2


async def test_the_faults_endpoint_refuses_what_it_cannot_apply(start_sim: StartSim) -> None:
    sim = await start_sim()
    for change in (
        {"error_rate": 2},
        {"latency_ms": -1},
        {"eror_rate": 0.1},
        {"error_rate": "high"},
    ):
        status, _ = await sim.faults(**change)
        assert status == 400, change
    assert sim.config.error_rate == 0.0


# --- records and stats -----------------------------------------------------------------


async def test_stats_and_records_count_every_resend(start_sim: StartSim) -> None:
    sim = await start_sim()
    await sim.post(UPDATE, [user(0)])
    await sim.post(TRACK, [event(0), event(1)])
    await sim.post(TRACK, [event(1), event(2)])  # ev-1 resent: recorded twice, one id
    assert [e["id"] for e in sim.state.events] == ["ev-0", "ev-1", "ev-1", "ev-2"]
    assert sim.state.events[0] == msgspec.to_builtins(event(0))  # the item as sent
    assert [r.items for r in sim.state.requests] == [1, 2, 2]
    assert [r.status for r in sim.state.requests] == [200, 200, 200]
    stats = await sim.stats()
    assert stats["events_received"] == 4 and stats["distinct_event_ids"] == 3
    assert stats["items_received"] == {"users/bulkUpdate": 1, "events/trackBulk": 4}
    assert stats["requests"] == {"events/trackBulk": {"200": 2}, "users/bulkUpdate": {"200": 1}}
    assert stats["max_items_in_one_request"] == {"users/bulkUpdate": 1, "events/trackBulk": 2}
    assert stats == sim.state.stats()


async def test_without_recording_only_counts_and_ids_are_kept(start_sim: StartSim) -> None:
    sim = await start_sim(record_items=False)
    await sim.post(UPDATE, [user(0)])
    await sim.post(TRACK, [event(0), event(1)])
    assert sim.state.events == [] and sim.state.users == []
    assert (
        sim.state.event_ids == {"ev-0", "ev-1"} and sim.state.profile(email="u0@example.com") == {}
    )
    assert (await sim.stats())["events_received"] == 2


async def test_a_full_batch_round_trips(start_sim: StartSim) -> None:
    sim = await start_sim()
    items = [
        event(n, dataFields={"price": n, "sku": f"S{n}", "tags": ["a", "b"]}) for n in range(8000)
    ]
    status, answer, _ = await sim.post(TRACK, items)
    assert status == 200 and answer["successCount"] == 8000
    assert len(sim.state.event_ids) == 8000 and sim.state.events[-1]["dataFields"]["sku"] == "S7999"


# --- the standalone server ------------------------------------------------------------


async def test_run_simulator_serves_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(run_simulator("127.0.0.1", port, SimulatorConfig()))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}/_sim/stats") as r:
                    assert r.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the simulator never listened")
    assert capsys.readouterr().out.count(f"listening on http://127.0.0.1:{port}/api/") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
