"""Lanes and batch assembly: caps, per-user order, user-before-events, fairness."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.deliver.lanes import Lanes, Queued
from forwarder.iterable import (
    BatchCaps,
    Endpoint,
    TrackEvent,
    UpdateEmail,
    UserUpdate,
    assemble_body,
    identity_of,
)

TRACK = Endpoint.TRACK_BULK
USERS = Endpoint.BULK_UPDATE
CHANGE = Endpoint.UPDATE_EMAIL


def event(email: str, n: int, pad: int = 0) -> Queued:
    item = TrackEvent(
        eventName="E",
        id=f"{email}-{n}",
        createdAt=1,
        email=email,
        dataFields={"pad": "x" * pad} if pad else None,
    )
    return Queued(identity_of(item), TRACK, item, msgspec.json.encode(item))


def user(email: str) -> Queued:
    item = UserUpdate(email=email, dataFields={"plan": "pro"})
    return Queued(identity_of(item), USERS, item, msgspec.json.encode(item))


def test_batch_keeps_each_users_items_in_order() -> None:
    lanes = Lanes()
    for n in range(3):
        lanes.put(event("a@x.io", n))
        lanes.put(event("b@x.io", n))
    batch = lanes.take_batch(TRACK, BatchCaps(100, 1_000_000))
    ids = [q.item.id for q in batch]  # type: ignore[union-attr]
    assert [i for i in ids if i.startswith("a")] == ["a@x.io-0", "a@x.io-1", "a@x.io-2"]
    assert [i for i in ids if i.startswith("b")] == ["b@x.io-0", "b@x.io-1", "b@x.io-2"]
    assert lanes.items == 0


def test_user_update_goes_before_that_users_events() -> None:
    lanes = Lanes()
    lanes.put(user("a@x.io"))
    lanes.put(event("a@x.io", 0))
    lanes.put(event("b@x.io", 0))
    caps = BatchCaps(100, 1_000_000)
    # a's event waits behind a's update; b's event is free to go.
    assert [q.user for q in lanes.take_batch(TRACK, caps)] == ["e:b@x.io"]
    users = lanes.take_batch(USERS, caps)
    assert [q.endpoint for q in users] == [USERS]
    assert lanes.take_batch(TRACK, caps) == []  # a is busy until its update settles
    lanes.settle({"e:a@x.io"})
    assert [q.item.id for q in lanes.take_batch(TRACK, caps)] == ["a@x.io-0"]  # type: ignore[union-attr]


def test_busy_user_waits_until_settled_and_back_items_go_first() -> None:
    lanes = Lanes()
    for n in range(4):
        lanes.put(event("a@x.io", n))
    first = lanes.take_batch(TRACK, BatchCaps(2, 1_000_000))
    assert [q.item.id for q in first] == ["a@x.io-0", "a@x.io-1"]  # type: ignore[union-attr]
    assert lanes.take_batch(TRACK, BatchCaps(2, 1_000_000)) == []
    lanes.settle({"e:a@x.io"}, back=first)  # e.g. a paused sync hands them back
    again = lanes.take_batch(TRACK, BatchCaps(10, 1_000_000))
    assert [q.item.id for q in again] == [f"a@x.io-{n}" for n in range(4)]  # type: ignore[union-attr]


def test_byte_cap_counts_the_whole_body() -> None:
    lanes = Lanes()
    for n in range(10):
        lanes.put(event(f"u{n}@x.io", 0, pad=100))
    size = len(lanes.take_batch(TRACK, BatchCaps(1, 10**6))[0].encoded)
    lanes2 = Lanes()
    for n in range(10):
        lanes2.put(event(f"u{n}@x.io", 0, pad=100))
    cap = len(b'{"events":[]}') + 3 * size + 2  # exactly three items and two commas
    batch = lanes2.take_batch(TRACK, BatchCaps(100, cap))
    assert len(batch) == 3
    assert len(assemble_body(TRACK, [q.encoded for q in batch])) == cap


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(st.tuples(st.integers(0, 7), st.booleans(), st.integers(0, 300)), max_size=120),
    max_items=st.integers(1, 20),
    max_bytes=st.integers(700, 5000),
)
def test_batches_never_exceed_caps_and_keep_order(
    plan: list[tuple[int, bool, int]], max_items: int, max_bytes: int
) -> None:
    lanes = Lanes()
    expected: dict[str, list[str]] = {}
    for n, (who, is_user, pad) in enumerate(plan):
        email = f"user{who}@x.io"
        if is_user:
            q = user(email)
            q.item.dataFields = {"n": n, "pad": "y" * pad}  # type: ignore[union-attr]
            q.encoded = msgspec.json.encode(q.item)
        else:
            q = event(email, n, pad)
        lanes.put(q)
        expected.setdefault(q.user, []).append(q.encoded.decode())
    seen: dict[str, list[str]] = {}
    caps = BatchCaps(max_items, max_bytes)
    for _ in range(10_000):  # bounded: every round settles what it took
        progressed = False
        for endpoint in (USERS, TRACK):
            batch = lanes.take_batch(endpoint, caps)
            if not batch:
                continue
            progressed = True
            assert len(batch) <= max_items
            assert len(assemble_body(endpoint, [q.encoded for q in batch])) <= max_bytes
            if endpoint is USERS:  # one item per user per bulkUpdate request
                assert len({q.user for q in batch}) == len(batch)
            for q in batch:
                for original in q.originals:  # a user's consecutive updates merge
                    seen.setdefault(q.user, []).append(original.encoded.decode())
            lanes.settle({q.user for q in batch})
        if not progressed:
            break
    assert lanes.items == 0 and lanes.bytes == 0
    assert seen == expected


def test_an_email_change_holds_the_new_emails_lane_until_it_is_settled() -> None:
    lanes = Lanes()
    caps = BatchCaps(100, 100_000)
    before = event("old@x.io", 1)
    change_item = UpdateEmail(currentEmail="old@x.io", newEmail="new@x.io")
    change = Queued(identity_of(change_item), CHANGE, change_item, msgspec.json.encode(change_item))
    after = event("new@x.io", 2)
    for queued in (before, change, after):
        lanes.put(queued)
    assert lanes.take_batch(TRACK, caps) == [before]  # the new email's event is held
    lanes.settle({before.user}, gone=[before])
    assert lanes.take_batch(CHANGE, caps) == [change]
    assert lanes.take_batch(TRACK, caps) == []  # still held while the change is in flight
    lanes.settle({change.user}, gone=[change])
    assert lanes.take_batch(TRACK, caps) == [after]


def test_consecutive_updates_of_a_user_merge_as_iterable_merges_them() -> None:
    lanes = Lanes()
    first, second = user("a@x.io"), user("a@x.io")
    assert isinstance(first.item, UserUpdate) and isinstance(second.item, UserUpdate)
    first.item.dataFields = {"plan": "free", "prefs": {"a": 1}, "city": "Oslo"}
    second.item.dataFields = {"plan": "pro", "prefs": {"b": 2}}
    second.item.mergeNestedObjects = True
    for queued in (first, second):
        queued.encoded = msgspec.json.encode(queued.item)
        lanes.put(queued)
    (merged,) = lanes.take_batch(USERS, BatchCaps(100, 100_000))
    assert merged.originals == [first, second] and lanes.items == 0
    assert isinstance(merged.item, UserUpdate)
    assert merged.item.dataFields == {"plan": "pro", "prefs": {"a": 1, "b": 2}, "city": "Oslo"}


def test_drop_takes_out_only_the_doomed_items_and_lets_held_lanes_go() -> None:
    lanes = Lanes()
    caps = BatchCaps(100, 100_000)
    kept, doomed = event("a@x.io", 1), event("b@x.io", 1)
    kept.seq, doomed.seq = 1, 2
    change_item = UpdateEmail(currentEmail="c@x.io", newEmail="a@x.io")
    change = Queued(identity_of(change_item), CHANGE, change_item, msgspec.json.encode(change_item))
    change.seq = 2
    for queued in (change, kept, doomed):
        lanes.put(queued)
    assert lanes.take_batch(TRACK, caps) == [doomed]  # a@x.io is held by the change
    lanes.settle({doomed.user}, back=[doomed])
    dropped = lanes.drop(lambda queued: queued.seq == 2)
    assert {id(q) for q in dropped} == {id(doomed), id(change)}
    assert (lanes.items, lanes.bytes) == (1, len(kept.encoded))
    # The change that held a@x.io's lane is gone: its event goes now.
    assert lanes.take_batch(TRACK, caps) == [kept]
    assert lanes.take_batch(CHANGE, caps) == []
