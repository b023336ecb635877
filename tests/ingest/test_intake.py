"""The intake on its own: profiles change on copies, commit or vanish with their record,
patches hold only what changed, and the profile size cap refuses a change."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import Event
from forwarder.ingest.intake import Intake, patches_of
from forwarder.iterable import Endpoint, UserUpdate
from forwarder.store.profiles import MemoryProfileStore
from forwarder.store.records import ProfilePatch, Record

SYNC = msgspec.convert(
    {"name": "s", "api_key": "k", "users": {"user_properties": ["plan", "blob"]}}, SyncConfig
)
NOW = 1_800_000_000


def make_intake(max_profile_bytes: int = 1 << 20) -> Intake:
    return Intake([SYNC], MemoryProfileStore(capacity=100), max_profile_bytes)


def identify(user: str, **properties: Any) -> Event:
    return Event(event_type="$identify", user_id=user, user_properties={"$set": properties})


def updates(intaken: Any) -> list[UserUpdate]:
    return [item for _, endpoint, item, _ in intaken.routed if endpoint is Endpoint.BULK_UPDATE]


async def durable() -> asyncio.Future[int]:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    return future


async def test_processing_changes_copies_and_commit_stores_them() -> None:
    intake = make_intake()
    intake.profiles.put("u1", {"email": "a@example.com", "plan": "free"})
    intaken = intake.process([identify("u1", plan="pro")], NOW)
    assert intake.profiles.get("u1")["plan"] == "free"  # not yet: only a copy changed
    # With the email Iterable is now told for sync "s" (email changes are told apart by it).
    told = {"$iterable:s": "a@example.com"}
    assert intaken.touched["u1"] == {"email": "a@example.com", "plan": "pro", **told}
    record = await durable()
    intake.stage(intaken, record)
    # A later request sees the staged profile; nothing changes, so no update goes out.
    later = intake.process([identify("u1", plan="pro")], NOW)
    assert not updates(later) and later.read_from == {record}
    record.set_result(1)
    intake.commit(intaken, record)
    assert intake.profiles.get("u1")["plan"] == "pro"


async def test_a_failed_record_leaves_no_trace_and_fails_what_read_it() -> None:
    intake = make_intake()
    intake.profiles.put("u1", {"email": "a@example.com", "plan": "free"})
    first = intake.process([identify("u1", plan="pro")], NOW)
    record = await durable()
    intake.stage(first, record)
    second = intake.process([identify("u1", city="Oslo")], NOW)
    record.set_exception(OSError("disk full"))
    assert intake.builds_on_failure(second)
    third = intake.process([identify("u1", city="Oslo")], NOW)
    assert not intake.builds_on_failure(third) and not third.read_from
    assert third.touched["u1"] == {"email": "a@example.com", "plan": "free", "city": "Oslo"}
    assert intake.profiles.get("u1")["plan"] == "free"


async def test_patches_hold_only_the_changed_properties() -> None:
    intake = make_intake()
    intake.profiles.put("u1", {"email": "a@example.com", "blob": "x" * 10_000, "n": 1})
    events = [
        Event(event_type="$identify", user_id="u1", user_properties={"$add": {"n": 1}}),
        Event(event_type="$identify", user_id="u1", user_properties={"$unset": {"gone": "-"}}),
        identify("u2", email="b@example.com"),
        Event(event_type="Seen", user_id="u3"),  # a new user with no properties
    ]
    patches = {p.user: p for p in patches_of(intake.process(events, NOW))}
    assert patches["u1"] == ProfilePatch("u1", {"n": 2}, [])
    told = {"$iterable:s": "b@example.com"}
    assert patches["u2"] == ProfilePatch("u2", {"email": "b@example.com", **told}, [])
    assert patches["u3"] == ProfilePatch("u3", {}, [])


async def test_restore_applies_patches_and_full_states() -> None:
    intake = make_intake()
    intake.profiles.put("u1", {"email": "a@example.com", "plan": "free", "old": True})
    record = Record(
        items=[],
        profiles=[("u0", {"plan": "team"})],
        patches=[ProfilePatch("u1", {"plan": "pro"}, ["old"]), ProfilePatch("u2", {}, [])],
    )
    await intake.restore(record)
    await intake.restore(record)  # replaying twice changes nothing more
    assert intake.profiles.get("u0") == {"plan": "team"}
    assert intake.profiles.get("u1") == {"email": "a@example.com", "plan": "pro"}
    assert not intake.profiles.is_new("u2") and intake.profiles.get("u2") == {}


async def test_a_change_past_the_profile_cap_is_refused_and_counted() -> None:
    intake = make_intake(max_profile_bytes=2_000)
    intake.profiles.put("u1", {"email": "a@example.com", "plan": "free"})
    intaken = intake.process([identify("u1", blob="x" * 5_000, plan="pro")], NOW)
    assert intake.totals.profile_changes_refused == 1
    assert "u1" not in intaken.touched and not updates(intaken)
    small = intake.process([identify("u1", plan="pro")], NOW)
    assert small.touched["u1"]["plan"] == "pro"


async def test_a_user_new_on_a_known_device_adopts_its_profile() -> None:
    intake = make_intake()
    anonymous = Event(
        event_type="$identify",
        device_id="device-1",
        user_properties={"$set": {"email": "early@example.com"}},
    )
    first = intake.process([anonymous], NOW)
    record = await durable()
    intake.stage(first, record)
    record.set_result(1)
    intake.commit(first, record)
    login = Event(event_type="Login", user_id="user-1", device_id="device-1")
    intaken = intake.process([login], NOW)
    told = {"$iterable:s": "early@example.com"}
    assert intaken.touched["user-1"] == {"email": "early@example.com", **told}
    (update,) = updates(intaken)
    assert update.email == "early@example.com" and update.userId == "user-1"
