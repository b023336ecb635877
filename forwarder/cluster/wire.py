"""What a stream message holds (one request's events of one partition) and which partition."""

from __future__ import annotations

import hashlib

import msgspec

from forwarder.ingest.amplitude import Event, IdentifyRecord


class PartitionBatch(msgspec.Struct, frozen=True):
    """One request's events of one partition, in the order the request held them."""

    # Unix seconds when ingest accepted them: dates events without a `time`, and is the
    # "now" of their dedupe window, however late the owner reads them.
    received_at: int
    events: list[Event]


# JSON, not msgpack: the events were decoded from JSON, so JSON gives every value back
# exactly (msgpack refuses integers past 64 bits, which JSON bodies may hold), at the same
# speed (measured: 25 µs to encode, 68 µs to decode 100 events either way).
class _Body(msgspec.Struct, omit_defaults=True):
    received_at: int
    events: list[Event]
    # Indexes of the events that are IdentifyRecords: the plain Event decoder would drop
    # their own fields (`paying`, `start_version`), so those are decoded again as such.
    identify_at: list[int] = []


class _LooseBody(msgspec.Struct):
    """The body with its events left raw: the slow path, for records to decode one by one."""

    received_at: int
    events: list[msgspec.Raw]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Body)
_loose_decoder = msgspec.json.Decoder(_LooseBody)
_record_decoder = msgspec.json.Decoder(IdentifyRecord)


class BadBatch(ValueError):
    """A message body that is not a PartitionBatch (written by something else)."""


def encode_batch(batch: PartitionBatch) -> bytes:
    records = [i for i, event in enumerate(batch.events) if type(event) is IdentifyRecord]
    return _encoder.encode(_Body(batch.received_at, batch.events, records))


def decode_batch(data: bytes) -> PartitionBatch:
    """The batch `encode_batch` wrote, each event of the class it had; BadBatch otherwise."""
    try:
        body = _decoder.decode(data)
        if not body.identify_at:
            return PartitionBatch(body.received_at, body.events)
        loose = _loose_decoder.decode(data)
        events = body.events
        for i in body.identify_at:
            events[i] = _record_decoder.decode(loose.events[i])
    except (msgspec.DecodeError, IndexError) as error:
        raise BadBatch(f"not a partition batch: {error}") from None
    return PartitionBatch(body.received_at, events)


def partition_of(user_key: str, partitions: int) -> int:
    """The partition of an Amplitude user key (`Event.amplitude_user`): the same on every
    node and in every process (blake2b, never Python's salted hash())."""
    digest = hashlib.blake2b(user_key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def subject_of(prefix: str, partition: int) -> str:
    """The subject a partition's messages are published on: `<prefix>.events.<p>`."""
    return f"{prefix}.events.{partition}"
