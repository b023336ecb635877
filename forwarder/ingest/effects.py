"""What an accepted event does beyond its own item: the profile update it makes, and the
key Amplitude deduplicates it by."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from hashlib import blake2b
from itertools import compress
from typing import Any

import msgspec

from forwarder.ingest.amplitude import Event, with_operation

# Top-level fields Amplitude keeps as user properties of the same name: an event that
# carries one sets it on the user's profile (so `user_properties.city` resolves).
USER_PROPERTY_FIELDS = (
    "app_version",
    "platform",
    "os_name",
    "os_version",
    "device_brand",
    "device_manufacturer",
    "device_model",
    "carrier",
    "country",
    "region",
    "city",
    "dma",
    "language",
)
user_property_fields = operator.attrgetter(*USER_PROPERTY_FIELDS)


def profile_update(event: Event, profile: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """What an event does to its user's profile, as one `user_properties` update: its
    user_properties, plus its top-level user-property fields (`city`, `platform`, ...) as
    `$set` where they differ from `profile`. None when `$skip_user_properties_sync` is
    true (Amplitude then leaves the user's properties as they are) or nothing applies."""
    if event.skip_user_properties_sync:
        return None
    explicit = event.user_properties
    # After a removal ($clearAll, $unset) a field is set even if the profile has it: the
    # removal runs first. Otherwise a field equal to the profile's is no change.
    every = explicit is not None and ("$clearAll" in explicit or "$unset" in explicit)
    fields: dict[str, Any] | None = None
    values = user_property_fields(event)
    # Only the fields the event has (not None, not ""), picked in C.
    for name, value in compress(zip(USER_PROPERTY_FIELDS, values, strict=True), values):
        if every or profile.get(name) != value:
            if fields is None:
                fields = {}
            fields[name] = value
    if fields is None:
        return explicit
    return with_operation(explicit, "$set", fields)


def dedupe_key(event: Event) -> bytes | None:
    """The key Amplitude dedupes an event by: its insert_id per device (per user when it
    has no device_id); None without insert_id. A fixed 16 bytes however long the ids."""
    insert_id = event.insert_id
    if not insert_id:
        return None
    return blake2b(_pack((event.device_id or event.user_id, insert_id)), digest_size=16).digest()


# An unambiguous encoding of a few strings, for hashing: ("ab", "c") and ("a", "bc") differ.
_pack = msgspec.msgpack.Encoder().encode
