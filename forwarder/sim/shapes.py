"""The request bodies the simulator decodes: Iterable's shapes, as lenient as Iterable is."""

from __future__ import annotations

from typing import Any

import msgspec

from forwarder.iterable import Endpoint, UpdateEmail, UserUpdate


class SimEvent(msgspec.Struct, kw_only=True):
    """An element of trackBulk's `events` (TrackRequest): only eventName is required."""

    eventName: str
    id: str | None = None
    createdAt: int | None = None
    email: str | None = None
    userId: str | None = None
    # Kept as raw JSON: decoding ~80,000 events/s of fields into dicts would cost the
    # core; they are decoded only when a test reads `SimulatorState.events`.
    dataFields: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    campaignId: int | None = None
    templateId: int | None = None
    createNewFields: bool | None = None


# An element of bulkUpdate's `users` (OptionalApiUser). Iterable takes exactly the fields
# and types the daemon sends there, and neither side refuses unknown fields, so the
# simulator decodes users with the daemon's own Struct.
SimUser = UserUpdate


class SimTrackBulk(msgspec.Struct):
    events: list[SimEvent]


class SimBulkUpdate(msgspec.Struct):
    users: list[SimUser]
    createNewFields: bool | None = None


# users/updateEmail's body (UpdateEmailRequest): the daemon's own Struct, as for users.
SimUpdateEmail = UpdateEmail

DECODERS: dict[Endpoint, msgspec.json.Decoder[Any]] = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(SimTrackBulk),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(SimBulkUpdate),
    Endpoint.UPDATE_EMAIL: msgspec.json.Decoder(SimUpdateEmail),
}


def event_dict(record: SimEvent) -> dict[str, Any]:
    """An event as a dict shaped like the request's item, its dataFields decoded."""
    event: dict[str, Any] = {"eventName": record.eventName}
    for name in ("id", "createdAt", "email", "userId"):
        value = getattr(record, name)
        if value is not None:
            event[name] = value
    if len(record.dataFields):
        event["dataFields"] = msgspec.json.decode(record.dataFields)
    for name in ("campaignId", "templateId", "createNewFields"):
        value = getattr(record, name)
        if value is not None:
            event[name] = value
    return event
