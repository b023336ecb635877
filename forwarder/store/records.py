"""The journal record format: what one accepted request turned into, as msgpack."""

from __future__ import annotations

from typing import Any

import msgspec

from forwarder.iterable import Endpoint, Item, TrackEvent, UserUpdate


class RecordItem(msgspec.Struct, array_like=True):
    sync: str
    endpoint: str
    item: bytes  # the item's JSON, exactly as it is sent


class Record(msgspec.Struct, array_like=True):
    """Items per sync, and the profiles the request left.

    Profiles are stored as their full state after the request, so replaying a record
    twice (or after the profile store already has it) leaves them as if nothing happened.
    """

    items: list[RecordItem]
    profiles: list[tuple[str, dict[str, Any]]]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)
_item_decoders: dict[Endpoint, msgspec.json.Decoder[Any]] = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(TrackEvent),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(UserUpdate),
}


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def decode_record(payload: bytes) -> Record:
    """The record; raises msgspec.DecodeError when the bytes are not one."""
    return _decoder.decode(payload)


def decode_item(entry: RecordItem) -> tuple[Endpoint, Item]:
    endpoint = Endpoint(entry.endpoint)
    item: Item = _item_decoders[endpoint].decode(entry.item)
    return endpoint, item
