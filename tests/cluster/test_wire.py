"""Stream message bodies: every event the validator accepts comes back exactly; partitions."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from forwarder.cluster.wire import (
    BadBatch,
    PartitionBatch,
    decode_batch,
    encode_batch,
    partition_of,
    subject_of,
)
from forwarder.ingest.amplitude import (
    Event,
    IdentifyRecord,
    RejectedRequest,
    decode_identify,
    decode_upload,
)

KEY = "amp-key"
KEYS = frozenset({KEY})

# JSON values as request bodies carry them: big integers (past 64 bits) included.
scalars = (
    st.none()
    | st.booleans()
    | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
)
scalars |= st.integers(min_value=-(2**80), max_value=2**80)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
ids = st.text(min_size=5, max_size=20).filter(lambda text: text.strip() == text and text != "")
event_bodies = st.fixed_dictionaries(
    {"event_type": st.text(min_size=1, max_size=20), "user_id": ids},
    optional={
        "device_id": ids,
        "time": st.integers(min_value=0, max_value=2**62),
        "insert_id": st.text(max_size=20),
        "event_properties": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "user_properties": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "$skip_user_properties_sync": st.booleans(),
        "price": st.floats(allow_nan=False, allow_infinity=False),
        "quantity": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "location_lat": st.floats(allow_nan=False, allow_infinity=False),
        "platform": st.text(max_size=10),
        "plan": st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    },
)


def accepted(events: list[dict[str, Any]]) -> list[Event]:
    """What /2/httpapi hands the sink for these events; the case is skipped if refused."""
    body = json.dumps({"api_key": KEY, "events": events}).encode()
    try:
        return decode_upload(body, KEYS, 2000)
    except RejectedRequest:
        assume(False)
        raise


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_bodies, min_size=1, max_size=6), st.integers(0, 2**40))
def test_accepted_events_round_trip_exactly(bodies: list[dict[str, Any]], at: int) -> None:
    events = accepted(bodies)
    decoded = decode_batch(encode_batch(PartitionBatch(at, events)))
    assert decoded == PartitionBatch(at, events)
    assert [type(event) for event in decoded.events] == [Event] * len(events)
    # Equal structs can still differ in what JSON they give (1 vs 1.0, True vs 1).
    assert msgspec.json.encode(decoded.events) == msgspec.json.encode(events)


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {"user_id": ids},
        optional={
            "paying": st.booleans() | st.text(max_size=5),
            "start_version": st.text(max_size=8),
            "user_properties": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        },
    )
)
def test_identify_records_keep_their_class_and_fields(record: dict[str, Any]) -> None:
    identified = IdentifyRecord(**msgspec.convert(record, dict[str, Any]))
    plain = Event(event_type="Purchase", user_id="user-00001")
    batch = PartitionBatch(7, [plain, identified, plain])
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    assert [type(event) for event in decoded.events] == [Event, IdentifyRecord, Event]


def test_identify_api_events_round_trip() -> None:
    identification = json.dumps(
        [{"user_id": "user-00001", "paying": True, "user_properties": {"email": "a@b.io"}}]
    )
    events = decode_identify(KEY, identification, KEYS, 2000)
    assert decode_batch(encode_batch(PartitionBatch(1, events))).events == events


@pytest.mark.parametrize("body", [b"", b"{}", b"[1,2]", b'{"received_at": 1, "events": [1]}'])
def test_a_foreign_body_is_a_bad_batch(body: bytes) -> None:
    with pytest.raises(BadBatch):
        decode_batch(body)


def test_partition_is_pinned_and_spread() -> None:
    # blake2b-64 of the key's UTF-8, mod partitions: every node and every release must
    # agree, or a user's events would be split between owners.
    keys = ("user-1", "device-abc", "ümlaut", "")
    assert [partition_of(key, 64) for key in keys] == [8, 32, 2, 52]
    assert [partition_of(key, 1024) for key in keys[:2]] == [392, 288]
    assert all(partition_of(f"user-{i}", 1) == 0 for i in range(20))
    counts = Counter(partition_of(f"user-{i}", 64) for i in range(64_000))
    assert len(counts) == 64
    assert min(counts.values()) > 800 and max(counts.values()) < 1200
    assert subject_of("forwarder", 12) == "forwarder.events.12"


def test_values_msgpack_could_not_carry_come_back() -> None:
    events = accepted(
        [
            {
                "event_type": "Big",
                "user_id": "user-00001",
                "event_properties": {"big": 2**70, "neg": -(2**64), "one": 1.0, "deep": [[{}]]},
            }
        ]
    )
    decoded = decode_batch(encode_batch(PartitionBatch(1, events))).events[0]
    assert decoded.event_properties == {"big": 2**70, "neg": -(2**64), "one": 1.0, "deep": [[{}]]}
    assert decoded.event_properties is not None
    assert type(decoded.event_properties["one"]) is float
