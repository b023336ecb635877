"""Amplitude's ingest rules on the real daemon over sockets, checked in Amplitude's answers
and in what reaches the simulated Iterable: invalid ids, insert_id dedupe (in memory, across
a restart, after a failed write), $skip_user_properties_sync, top-level user properties,
the 1024-character cut, the depth rule, /identify forms, $groupidentify, and event ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.effects import dedupe_key
from forwarder.ingest.intake import Intake
from forwarder.ingest.route import event_id
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dedupe import MemorySeenInserts
from forwarder.store.profiles import MemoryProfileStore
from forwarder.store.records import Record, decode_record, encode_record
from forwarder.store.sqlite_dedupe import SqliteSeenInserts
from tests.harness import AMPLITUDE_KEY, Daemon, make_config, post_events, serve

USER = "user-00001"
SETTINGS: dict[str, Any] = {
    "events": {"event_properties": ["sku", "n"]},
    "users": {"user_properties": ["plan", "city", "visits", "paying", "start_version"]},
}


class Setup:
    def __init__(self, daemon: Daemon, state: SimulatorState, session: aiohttp.ClientSession):
        self.daemon, self.state, self.session = daemon, state, session

    async def post(self, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        return await post_events(self.session, self.daemon.url, events)

    async def identify(self, method: str, **kwargs: Any) -> tuple[int, str]:
        async with self.session.request(method, self.daemon.url + "/identify", **kwargs) as r:
            return r.status, await r.text()

    def profile(self, user: str = USER) -> dict[str, Any]:
        """The user's Amplitude properties ("$..." keys are the daemon's own notes)."""
        profile = self.daemon.pipeline.intake.profiles.get(user)
        return {key: value for key, value in profile.items() if not key.startswith("$")}

    async def settled(self) -> None:
        """Everything queued is delivered (bounded by drain's own timeout)."""
        assert await self.daemon.pipeline.drain(10)

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.daemon.pipeline.intake.stats[0].skipped)


async def start(tmp_path: Path, durability: str = "memory") -> tuple[Daemon, SimulatorState, Any]:
    state = SimulatorState()
    runner, url = await serve(
        build_simulator_app(
            SimulatorConfig(track_bulk_per_second=100, bulk_update_per_second=100), state
        )
    )
    daemon = await Daemon(make_config(tmp_path, url, durability=durability, **SETTINGS)).start()
    return daemon, state, runner


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    daemon, state, runner = await start(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            yield Setup(daemon, state, session)
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()


def email_of(user: str = USER) -> dict[str, Any]:
    return {
        "event_type": "$identify",
        "user_id": user,
        "user_properties": {"$set": {"email": f"{user}@example.com"}},
    }


def purchase(insert_id: str, user: str = USER, **fields: Any) -> dict[str, Any]:
    return {"event_type": "Purchase", "user_id": user, "insert_id": insert_id, **fields}


# --- 4. invalid ids -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["anonymous", "Anonymous", "n/a", "N/A", "na", "NA"])
@pytest.mark.parametrize("field", ["user_id", "device_id"])
async def test_placeholder_ids_are_a_400_naming_the_events(
    setup: Setup, field: str, value: str
) -> None:
    bad = {"event_type": "Viewed", "user_id": "user-00002", field: value}
    status, answer = await setup.post([purchase("ok-1"), bad, purchase("ok-2")])
    assert status == 400 and answer["code"] == 400
    assert answer["events_with_invalid_fields"] == {field: [1]}
    assert setup.daemon.pipeline.intake.profiles.is_new(USER)  # nothing of it was applied


# --- 4. insert_id dedupe ----------------------------------------------------------------


async def test_a_repeated_insert_id_is_answered_200_and_applies_nothing(setup: Setup) -> None:
    add = {
        "event_type": "$identify",
        "user_id": USER,
        "insert_id": "visit-1",
        "user_properties": {"$add": {"visits": 1}},
    }
    assert (await setup.post([email_of()]))[0] == 200
    for _ in range(2):
        status, answer = await setup.post([add, purchase("buy-1", event_properties={"n": 1})])
        assert status == 200 and answer == {**answer, "code": 200, "events_ingested": 2}
    # Repeated within one request too: the first one counts.
    status, _ = await setup.post([purchase("buy-2"), purchase("buy-2")])
    assert status == 200
    await setup.settled()
    assert setup.profile()["visits"] == 1
    assert [e.get("dataFields") for e in setup.state.events] == [{"n": 1}, None]
    assert len(setup.state.event_ids) == 2
    visits = [u["dataFields"].get("visits") for u in setup.state.users if u.get("dataFields")]
    assert visits == [1]  # one user update for the $add, not two
    assert setup.skipped["duplicate"] == 3


async def test_dedupe_is_per_device_as_amplitude_does_it(setup: Setup) -> None:
    assert (await setup.post([email_of()]))[0] == 200
    on_phone = purchase("same-id", device_id="phone-0001")
    on_laptop = purchase("same-id", device_id="laptop-001")
    for event in (on_phone, on_laptop, on_phone):
        assert (await setup.post([event]))[0] == 200
    await setup.settled()
    # Two devices: two events, with two ids; the phone's repeat is ignored.
    assert len(setup.state.events) == len(setup.state.event_ids) == 2
    assert setup.skipped["duplicate"] == 1


async def test_seen_insert_ids_survive_a_restart_in_journal_mode(tmp_path: Path) -> None:
    events = [email_of(), purchase("buy-1", event_properties={"n": 1})]
    daemon, state, runner = await start(tmp_path, durability="journal")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post_events(session, daemon.url, events))[0] == 200
            assert await daemon.drain_and_stop()
            again = await Daemon(daemon.config).start()
            status, answer = await post_events(session, again.url, events[1:])
            assert status == 200 and answer["events_ingested"] == 1
            assert await again.pipeline.drain(10)
            assert again.pipeline.intake.stats[0].skipped["duplicate"] == 1
            assert await again.drain_and_stop()
    finally:
        await runner.cleanup()
    assert len(state.events) == 1


async def test_a_replayed_record_brings_its_insert_ids_back() -> None:
    """Crash before the checkpoint: the journal record carries the keys, replay restores them."""
    sync = SyncConfig(name="s", api_key="k")
    intake = Intake([sync], MemoryProfileStore(100), 1 << 20)
    event = Event(event_type="Purchase", user_id=USER, insert_id="buy-1")
    intaken = intake.process([event], 1_800_000_000)
    record = decode_record(encode_record(Record([], seen=list(intaken.seen), seen_at=intaken.now)))
    fresh = Intake([sync], MemoryProfileStore(100), 1 << 20)
    await fresh.restore(record)
    assert not fresh.process([event], 1_800_000_100).routed
    assert fresh.stats[0].skipped["duplicate"] == 1


async def test_an_insert_id_counts_as_seen_only_once_its_record_is_durable() -> None:
    """A request refused with 503 (its record failed) leaves its insert_ids unseen: the
    resend is applied, once; a repeat that read a failing record fails with it."""
    sync = SyncConfig(name="s", api_key="k")
    intake = Intake([sync], MemoryProfileStore(100), 1 << 20)
    intake.profiles.put(USER, {"email": "a@example.com"})
    event = Event(event_type="Purchase", user_id=USER, insert_id="buy-1")
    first = intake.process([event], 1_800_000_000)
    failing: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    intake.stage(first, failing)
    repeat = intake.process([event], 1_800_000_000)  # while the first is being written
    assert not repeat.routed and failing in repeat.read_from
    failing.set_exception(OSError("disk full"))
    assert intake.builds_on_failure(repeat)  # so the repeat is refused too (503)
    resend = intake.process([event], 1_800_000_001)
    assert resend.seen and resend.routed  # applied: the failed one left no trace
    intake.commit(resend)
    assert not intake.process([event], 1_800_000_002).routed


def test_the_seen_inserts_are_bounded_and_expire() -> None:
    seen = MemorySeenInserts(capacity=3, window_seconds=100)
    seen.add([b"a", b"b"], at=1_000)
    seen.add([b"c", b"d"], at=1_010)
    assert len(seen) == 3 and seen.evicted == 1 and not seen.seen(b"a", 1_010)
    assert seen.seen(b"b", 1_099) and not seen.seen(b"b", 1_100)  # the window is 100 s
    seen.add([b"e"], at=1_105)  # expires b, then c and d stay until 1_110
    assert len(seen) == 3 and seen.seen(b"e", 1_105) and not seen.seen(b"b", 1_105)


async def test_the_seen_inserts_on_disk_are_bounded_and_reload(tmp_path: Path) -> None:
    store = await SqliteSeenInserts(tmp_path, capacity=50, window_seconds=100).open(now=1_000)
    store.add([f"k{n}".encode() for n in range(80)], at=1_000)
    store.add([b"late"], at=1_050)
    await store.close()
    reopened = await SqliteSeenInserts(tmp_path, capacity=50, window_seconds=100).open(now=1_060)
    assert len(reopened) == 50 and reopened.seen(b"late", 1_060) and reopened.seen(b"k79", 1_060)
    assert not reopened.seen(b"k0", 1_060)  # evicted for room, on disk too
    assert await reopened.count_rows() == 50  # what memory holds, not all 81 keys added
    await reopened.close()
    later = await SqliteSeenInserts(tmp_path, capacity=50, window_seconds=100).open(now=1_101)
    assert len(later) == 1 and later.seen(b"late", 1_101)  # the others' window ended
    await later.close()


# --- 4. $skip_user_properties_sync and top-level user properties -------------------------


async def test_skip_user_properties_sync_leaves_the_profile_as_it_is(setup: Setup) -> None:
    assert (await setup.post([email_of()]))[0] == 200
    skipping = purchase(
        "buy-1",
        city="Oslo",
        user_properties={"$set": {"plan": "pro"}},
        **{"$skip_user_properties_sync": True},
    )
    status, answer = await setup.post([skipping])
    assert status == 200 and answer["events_ingested"] == 1
    await setup.settled()
    assert setup.profile() == {"email": f"{USER}@example.com"}
    assert len(setup.state.events) == 1  # the event itself still goes
    assert not any((u.get("dataFields") or {}).get("plan") for u in setup.state.users)


async def test_top_level_fields_are_user_properties_and_fire_send_users(setup: Setup) -> None:
    event = purchase("buy-1", city="Oslo", platform="iOS", country="Norway", os_name="ios")
    assert (await setup.post([email_of(), event]))[0] == 200
    assert (await setup.post([purchase("buy-2", city="Bergen")]))[0] == 200
    await setup.settled()
    profile = setup.profile()
    assert {k: profile[k] for k in ("platform", "country", "os_name")} == {
        "platform": "iOS",
        "country": "Norway",
        "os_name": "ios",
    }
    assert profile["city"] == "Bergen"
    cities = [u["dataFields"]["city"] for u in setup.state.users if "city" in u["dataFields"]]
    assert cities == ["Oslo", "Bergen"]  # city is a selected user property: each change sent


async def test_identify_paying_and_start_version_reach_the_profile(setup: Setup) -> None:
    first = {"user_id": USER, "paying": "true", "start_version": "1.0", "city": "Lima"}
    second = {"user_id": USER, "paying": "false", "start_version": "2.0"}
    for record in (first, second):
        form = {"api_key": AMPLITUDE_KEY, "identification": json.dumps(record)}
        assert await setup.identify("POST", data=form) == (200, "success")
    profile = setup.profile()
    # paying is set each time; start_version is the version the user started on.
    assert (profile["paying"], profile["start_version"], profile["city"]) == (
        "false",
        "1.0",
        "Lima",
    )


# --- 4. strings and depth ---------------------------------------------------------------


async def test_strings_over_1024_characters_are_cut(setup: Setup) -> None:
    long = "é" * 1500 + '"quoted"'
    event = purchase("buy-1", city=long, event_properties={"sku": long, "n": [long, {"x": long}]})
    status, answer = await setup.post([email_of(), event])
    assert status == 200 and answer["events_ingested"] == 2
    await setup.settled()
    (sent,) = setup.state.events
    assert sent["dataFields"]["sku"] == "é" * 1024
    assert sent["dataFields"]["n"] == ["é" * 1024, {"x": "é" * 1024}]
    assert setup.profile()["city"] == "é" * 1024


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"in": value}
    return value


async def test_objects_deeper_than_40_levels_are_a_400_naming_the_events(setup: Setup) -> None:
    ok = purchase("buy-1", event_properties=nested(40))
    status, _ = await setup.post([email_of(), ok])
    assert status == 200
    deep = purchase("buy-2", user_properties={"$set": {"deep": [nested(40)]}})
    status, answer = await setup.post([ok, purchase("buy-3", event_properties=nested(41)), deep])
    assert status == 400 and answer["code"] == 400 and "deeper than 40" in answer["error"]
    assert answer["events_with_invalid_fields"] == {"event_properties": [1], "user_properties": [2]}
    form = {
        "api_key": AMPLITUDE_KEY,
        "identification": json.dumps({"user_id": USER, "user_properties": nested(41)}),
    }
    status, text = await setup.identify("POST", data=form)
    assert status == 400 and json.loads(text)["events_with_invalid_fields"] == {
        "user_properties": [0]
    }


# --- 4. /identify forms -----------------------------------------------------------------


async def test_identify_takes_multipart_forms(setup: Setup) -> None:
    identification = json.dumps({"user_id": USER, "user_properties": {"$set": {"plan": "pró"}}})
    with aiohttp.MultipartWriter("form-data") as form:
        for name, value in (("api_key", AMPLITUDE_KEY), ("identification", identification)):
            form.append(value).set_content_disposition("form-data", name=name)
    assert await setup.identify("POST", data=form) == (200, "success")
    assert setup.profile()["plan"] == "pró"
    # A part without a name is refused in Amplitude's shape, not a crash.
    with aiohttp.MultipartWriter("form-data") as broken:
        broken.append(identification)
    status, text = await setup.identify("POST", data=broken)
    assert status == 400 and json.loads(text)["code"] == 400


async def test_identify_takes_get_with_query_parameters(setup: Setup) -> None:
    identification = json.dumps({"user_id": USER, "user_properties": {"city": "Porto"}})
    query = urlencode({"api_key": AMPLITUDE_KEY, "identification": identification})
    status, text = await _get(setup, "/identify?" + query)
    assert (status, text) == (200, "success")
    assert setup.profile()["city"] == "Porto"
    status, text = await _get(setup, "/identify?identification=" + identification)
    assert status == 400 and json.loads(text)["missing_field"] == "api_key"


async def _get(setup: Setup, path: str) -> tuple[int, str]:
    async with setup.session.get(setup.daemon.url + path) as response:
        return response.status, await response.text()


# --- 4. $groupidentify ------------------------------------------------------------------


async def test_group_identify_is_accepted_and_counted_as_skipped(setup: Setup) -> None:
    # As the Python SDK sends it: no user_id or device_id, group properties only.
    group = {
        "event_type": "$groupidentify",
        "groups": {"org": "acme"},
        "group_properties": {"$set": {"seats": 40}},
    }
    status, answer = await setup.post([group, {**group, "user_id": USER}])
    assert status == 200 and answer["events_ingested"] == 2
    await setup.settled()
    assert setup.skipped["group_identify"] == 2
    assert not setup.state.events and not setup.state.users
    assert setup.daemon.pipeline.intake.profiles.is_new(USER)


# --- 5. Iterable event ids --------------------------------------------------------------


async def test_event_ids_are_per_user_bounded_and_stable(tmp_path: Path) -> None:
    long_id = "i" * 1024
    events = [
        email_of(USER),
        email_of("user-00002"),
        purchase("shared-insert-id"),
        purchase("shared-insert-id", user="user-00002"),
        purchase(long_id),
    ]
    sent: list[dict[str, Any]] = []
    for _ in range(2):  # a restart in memory mode forgets the dedupe keys: a real resend
        daemon, state, runner = await start(tmp_path)
        try:
            async with aiohttp.ClientSession() as session:
                assert (await post_events(session, daemon.url, events))[0] == 200
                assert await daemon.drain_and_stop()
        finally:
            await runner.cleanup()
        sent.append({e["userId"] if "userId" in e else e["email"]: e for e in state.events})
        ids = [e["id"] for e in state.events]
        assert len(ids) == len(set(ids)) == 3  # two users' events never share an id
        assert all(len(i.encode()) <= 512 for i in ids)
    assert [e["id"] for e in sent[0].values()] == [e["id"] for e in sent[1].values()]
    expected = event_id(Event(user_id=USER, insert_id=long_id), b"")
    assert expected in {e["id"] for e in sent[0].values()}
    # The dedupe key is per device (else user); the id adds the user: never the same bytes.
    assert dedupe_key(Event(user_id=USER, insert_id="x")) != dedupe_key(
        Event(user_id="user-00002", insert_id="x")
    )
