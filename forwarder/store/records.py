"""The journal record format: what one accepted request turned into, as msgpack."""

from __future__ import annotations

from typing import Any

import msgspec

from forwarder.iterable import Endpoint, Item, TrackEvent, UpdateEmail, UserUpdate


class RecordItem(msgspec.Struct, array_like=True):
    sync: str
    endpoint: str
    item: bytes  # the item's JSON, exactly as it is sent


class ProfilePatch(msgspec.Struct, array_like=True):
    """The properties one request changed on one user: their new values, and the removed.

    Values are absolute (never "add 1"), so replaying a patch twice, or on a profile that
    already has it, changes nothing; replayed in log order, patches rebuild every change
    made after the checkpoint. A user seen for the first time has an empty patch.
    """

    user: str
    set: dict[str, Any]
    unset: list[str]


class Record(msgspec.Struct, array_like=True):
    """Items per sync, and the profile changes of the request."""

    items: list[RecordItem]
    # Full profile states after the request: what records held before patches. Read on
    # replay so a journal written by an older version still recovers; never written now.
    profiles: list[tuple[str, dict[str, Any]]] = []
    patches: list[ProfilePatch] = []
    # The insert_id dedupe keys the request's events were the first to use, and when
    # (Unix seconds): replay remembers them again, so a resend after a crash stays a repeat.
    seen: list[bytes] = []
    seen_at: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)
_item_decoders: dict[Endpoint, msgspec.json.Decoder[Any]] = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(TrackEvent),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(UserUpdate),
    Endpoint.UPDATE_EMAIL: msgspec.json.Decoder(UpdateEmail),
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
