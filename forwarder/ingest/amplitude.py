"""Amplitude's ingest wire shapes (HTTP V2, Batch, Identify) and its validation rules."""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Mapping, Sized
from typing import Any

import msgspec

from forwarder.errors import FailureKind, ForwarderError, mask
from forwarder.ingest.counting import events_overflow
from forwarder.ingest.limits import (
    MAX_DEPTH,
    NESTED_FIELDS,
    cut_long_strings,
    deeper_than,
    may_hold_long_strings,
)

IDENTIFY_EVENT = "$identify"
GROUP_IDENTIFY_EVENT = "$groupidentify"
DEFAULT_MIN_ID_LENGTH = 5
# Amplitude refuses these as ids: SDK placeholders that would merge unrelated users.
INVALID_ID_VALUES = frozenset(
    {
        "anonymous",
        "n/a",
        "na",
        "null",
        "undefined",
        "unknown",
        "none",
        "nil",
        "0",
        "-1",
        "00000000-0000-0000-0000-000000000000",
        "lmy47d",
        "[]",
        "{}",
    }
)
# Amplitude keeps strings up to 1024 characters (its SDKs cut them before sending) and
# refuses property objects nested deeper than 40 levels.


class Event(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One Amplitude event as the HTTP V2 and Batch APIs take it (unknown fields are ignored)."""

    event_type: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    time: int | None = None
    event_properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None
    groups: dict[str, Any] | None = None
    group_properties: dict[str, Any] | None = None
    insert_id: str | None = None
    # True: the event's user properties (top-level ones too) leave the profile as it is.
    skip_user_properties_sync: bool | None = msgspec.field(
        default=None, name="$skip_user_properties_sync"
    )
    # The app and device, which Amplitude also keeps as user properties.
    app_version: str | None = None
    platform: str | None = None
    os_name: str | None = None
    os_version: str | None = None
    device_brand: str | None = None
    device_manufacturer: str | None = None
    device_model: str | None = None
    carrier: str | None = None
    # Where the user is.
    country: str | None = None
    region: str | None = None
    city: str | None = None
    dma: str | None = None
    language: str | None = None
    # Revenue.
    price: float | None = None
    quantity: int | None = None
    revenue: float | None = None
    currency: str | None = None
    productId: str | None = None
    revenueType: str | None = None
    location_lat: float | None = None
    location_lng: float | None = None
    ip: str | None = None
    # Advertising and device identifiers.
    idfa: str | None = None
    idfv: str | None = None
    adid: str | None = None
    android_id: str | None = None
    # The event's place in its session.
    event_id: int | None = None
    session_id: int | None = None
    # What sent the event.
    library: str | None = None
    plan: dict[str, Any] | None = None
    ingestion_metadata: dict[str, Any] | None = None
    partner_id: str | None = None
    user_agent: str | None = None

    @property
    def amplitude_user(self) -> str:
        """The key a profile is kept under: user_id, else device_id."""
        return self.user_id or self.device_id or ""


# Event field names, for property paths that name a top-level field.
EVENT_FIELDS = frozenset(Event.__struct_fields__)


class UploadOptions(msgspec.Struct, kw_only=True):
    min_id_length: int | None = None


class UploadRequest(msgspec.Struct, kw_only=True):
    """Body of POST /2/httpapi and POST /batch, fully typed: the fast path."""

    api_key: str | None = None
    events: list[Event] | None = None
    options: UploadOptions | None = None


class _RequestHead(msgspec.Struct, kw_only=True):
    """The body's key and options alone: decoding it skips `events` without building them."""

    api_key: str | None = None
    options: UploadOptions | None = None


class _LooseUploadRequest(msgspec.Struct, kw_only=True):
    """The same body with events left raw, to find which event is at fault."""

    api_key: str | None = None
    events: list[msgspec.Raw] | None = None
    options: UploadOptions | None = None


class IdentifyRecord(Event, omit_defaults=True, kw_only=True):
    """One element of the Identify API's `identification` form field.

    Its fields are an event's user and device fields (the rest are ignored: it becomes a
    `$identify` event), plus two that only identify calls carry.
    """

    paying: str | bool | None = None
    start_version: str | None = None


# --- answers ---------------------------------------------------------------------------


class SuccessBody(msgspec.Struct):
    code: int
    events_ingested: int
    payload_size_bytes: int
    server_upload_time: int


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    error: str
    missing_field: str | None = None
    events_with_invalid_fields: dict[str, list[int]] | None = None
    events_with_missing_fields: dict[str, list[int]] | None = None
    events_with_invalid_id_lengths: dict[str, list[int]] | None = None
    throttled_events: list[int] | None = None
    eps_threshold: int | None = None


class RejectedRequest(ForwarderError):
    """An ingest request refused as a whole; `body` is what the client gets back."""

    def __init__(self, status: int, kind: FailureKind, body: ErrorBody) -> None:
        super().__init__(body.error)
        self.status = status
        self.kind = kind
        self.body = body


def bad_request(kind: FailureKind, error: str, **fields: Any) -> RejectedRequest:
    return RejectedRequest(400, kind, ErrorBody(code=400, error=error, **fields))


def payload_too_large(error: str) -> RejectedRequest:
    return RejectedRequest(413, FailureKind.TOO_LARGE, ErrorBody(code=413, error=error))


def throttled(count: int, error: str) -> ErrorBody:
    """Our backpressure answer: every index throttled, so the SDKs wait before resending."""
    return ErrorBody(code=429, error=error, throttled_events=list(range(count)))


def success(count: int, payload_size: int) -> SuccessBody:
    return SuccessBody(
        code=200,
        events_ingested=count,
        payload_size_bytes=payload_size,
        server_upload_time=int(time.time() * 1000),
    )


# --- decoding and validation ------------------------------------------------------------

_upload_decoder = msgspec.json.Decoder(UploadRequest)
_head_decoder = msgspec.json.Decoder(_RequestHead)
_loose_decoder = msgspec.json.Decoder(_LooseUploadRequest)
_event_decoder = msgspec.json.Decoder(Event)
_identify_decoder = msgspec.json.Decoder(IdentifyRecord | list[IdentifyRecord])
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def _field_of(error: msgspec.DecodeError) -> tuple[str, str]:
    """The top field named by a msgspec error, and the error without the path."""
    text = str(error)
    match = _AT_PATH.search(text)
    if not match:
        return "event", text
    path = match.group(1)
    field = re.split(r"[.\[]", path, maxsplit=1)[0] or "event"
    return field, text[: match.start()].replace("`", "")


def _malformed(what: str, error: msgspec.DecodeError | RecursionError) -> RejectedRequest:
    """A body that is not JSON, or nests deeper than the decoder goes."""
    detail = "objects nested too deeply" if isinstance(error, RecursionError) else str(error)
    return bad_request(FailureKind.MALFORMED, f"{what}: {detail}")


def _missing(kind: FailureKind, field: str, empty: bool = False) -> RejectedRequest:
    """Amplitude's answer to a required field that is absent, or present but empty."""
    error = "Request missing required field" + (f": {field} is empty" if empty else "")
    return bad_request(kind, error, missing_field=field)


def _check_count(items: Sized, kind: FailureKind, field: str, noun: str, max_events: int) -> None:
    """The upload and Identify APIs' shared rule: at least one item, at most max_events."""
    if not items:
        raise _missing(kind, field, empty=True)
    if len(items) > max_events:
        raise payload_too_large(f"Too many {noun} in one request: {len(items)} > {max_events}")


def decode_upload(body: bytes, api_keys: frozenset[str], max_events: int) -> list[Event]:
    """Decode and validate a /2/httpapi or /batch body; raise RejectedRequest like Amplitude.

    The key and the event count are checked before any event is built, so a refused body
    costs a scan of its bytes, not an object per event (`{},` is 3 bytes, an Event ~400).
    """
    check_utf8(body, "Invalid JSON request body")
    if body.count(b"{") > max_events:
        # It may hold more events than allowed (each is an object: one `{` at least), or
        # be for another key: find out before building any event.
        _check_head(body, api_keys, max_events)
    # Otherwise it holds at most max_events objects, so building them is bounded.
    try:
        request = _upload_decoder.decode(body)
    except msgspec.ValidationError:
        # Some part has the wrong type: decode again loosely to name each event at fault
        # (its events may be anything, a million numbers too: check the head first).
        _check_head(body, api_keys, max_events)
        request = _decode_loose(body)
    except (msgspec.DecodeError, RecursionError) as error:
        raise _malformed("Invalid JSON request body", error) from None
    _check_api_key(request.api_key, api_keys)
    events = request.events
    if events is None:
        raise _missing(FailureKind.MISSING_EVENTS, "events")
    _check_count(events, FailureKind.MISSING_EVENTS, "events", "events", max_events)
    min_id_length = DEFAULT_MIN_ID_LENGTH
    if request.options is not None and request.options.min_id_length is not None:
        if request.options.min_id_length < 1:
            raise bad_request(
                FailureKind.INVALID_EVENTS,
                "Invalid options: min_id_length must be a positive integer",
                events_with_invalid_fields={"options.min_id_length": []},
            )
        min_id_length = request.options.min_id_length
    if may_hold_long_strings(body):
        for event in events:
            cut_long_strings(event)
    check_events(events, min_id_length)
    return events


# Bodies are checked for UTF-8 a slice at a time, so the check holds no copy of the body.
_UTF8_SLICE = 1 << 20


def check_utf8(body: bytes, what: str) -> None:
    """Refuse bytes that are not UTF-8 anywhere, even in fields the decoders skip."""
    if body.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    start = 0
    try:
        for start in range(0, len(body), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        offset = start + error.start
        raise bad_request(
            FailureKind.MALFORMED, f"{what}: invalid UTF-8 at byte {offset}"
        ) from None


def _check_head(body: bytes, api_keys: frozenset[str], max_events: int) -> None:
    """The key and the event count, checked without building one event."""
    head = _decode_head(body)
    _check_api_key(head.api_key, api_keys)
    if events_overflow(body, max_events):
        raise _too_many("events", max_events)


def _decode_head(body: bytes) -> _RequestHead:
    try:
        return _head_decoder.decode(body)
    except msgspec.ValidationError as error:
        field, message = _field_of(error)
        if field in ("api_key", "options"):
            raise bad_request(FailureKind.MALFORMED, f"Invalid field {field}: {message}") from None
        raise bad_request(FailureKind.MALFORMED, f"Invalid request body: {message}") from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise _malformed("Invalid JSON request body", error) from None


def _too_many(noun: str, max_events: int) -> RejectedRequest:
    return payload_too_large(f"Too many {noun} in one request: more than {max_events}")


def _decode_loose(body: bytes) -> UploadRequest:
    try:
        loose = _loose_decoder.decode(body)
    except msgspec.ValidationError as error:
        field, message = _field_of(error)
        if field in ("api_key", "options"):
            raise bad_request(FailureKind.MALFORMED, f"Invalid field {field}: {message}") from None
        if field == "events":
            raise bad_request(
                FailureKind.INVALID_EVENTS,
                f"Invalid field events: {message}",
                events_with_invalid_fields={"events": []},
            ) from None
        raise bad_request(FailureKind.MALFORMED, f"Invalid request body: {message}") from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise _malformed("Invalid JSON request body", error) from None
    if loose.events is None:
        return UploadRequest(api_key=loose.api_key, options=loose.options)
    invalid: dict[str, list[int]] = {}
    for index, raw in enumerate(loose.events):
        try:
            _event_decoder.decode(raw)
        except RecursionError:
            invalid.setdefault("event", []).append(index)
        except msgspec.DecodeError as error:
            field, _ = _field_of(error)
            invalid.setdefault(field, []).append(index)
    # The loose decode only fails the whole body when an event does; name them all.
    raise bad_request(
        FailureKind.INVALID_EVENTS,
        "Request has events with invalid fields",
        events_with_invalid_fields=invalid,
    )


def _check_api_key(api_key: str | None, api_keys: frozenset[str]) -> None:
    if not api_key:
        raise _missing(FailureKind.MISSING_API_KEY, "api_key")
    if api_key not in api_keys:
        raise bad_request(FailureKind.INVALID_API_KEY, f"Invalid API key: {mask(api_key)}")


def check_events(events: list[Event], min_id_length: int = DEFAULT_MIN_ID_LENGTH) -> None:
    """Amplitude's per-event rules; one bad event rejects the request, naming its index."""
    missing: dict[str, list[int]] = {}
    invalid: dict[str, list[int]] = {}
    short_ids: dict[str, list[int]] = {}
    too_deep: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        if not event.event_type:
            missing.setdefault("event_type", []).append(index)
        # A group identify changes a group, never a user: the SDKs send it without ids.
        if event.event_type != GROUP_IDENTIFY_EVENT:
            if not event.user_id and not event.device_id:
                missing.setdefault("user_id or device_id", []).append(index)
            for name, value in (("user_id", event.user_id), ("device_id", event.device_id)):
                if not value:
                    continue
                if value.lower() in INVALID_ID_VALUES:
                    invalid.setdefault(name, []).append(index)
                elif len(value) < min_id_length:
                    short_ids.setdefault(name, []).append(index)
        if event.time is not None and event.time < 0:
            invalid.setdefault("time", []).append(index)
        for name in NESTED_FIELDS:
            nested = getattr(event, name)
            if nested and deeper_than(nested, MAX_DEPTH):
                too_deep.setdefault(name, []).append(index)
    if missing or invalid or short_ids or too_deep:
        parts = []
        if missing:
            parts.append("missing fields")
        if invalid:
            parts.append("invalid fields")
        if too_deep:
            parts.append(f"objects nested deeper than {MAX_DEPTH} levels")
            for name, indexes in too_deep.items():  # named as invalid fields, as Amplitude does
                invalid.setdefault(name, []).extend(indexes)
        if short_ids:
            parts.append(f"ids shorter than {min_id_length}")
        raise bad_request(
            FailureKind.INVALID_EVENTS,
            "Request has events with " + " and ".join(parts),
            events_with_missing_fields=missing or None,
            events_with_invalid_fields=invalid or None,
            events_with_invalid_id_lengths=short_ids or None,
        )


def decode_identify(
    api_key: str | None, identification: str | None, api_keys: frozenset[str], max_events: int
) -> list[Event]:
    """Turn an Identify API form into `$identify` events, validated like the upload APIs."""
    _check_api_key(api_key, api_keys)
    if identification is None:
        raise _missing(FailureKind.MISSING_IDENTIFICATION, "identification")
    if events_overflow(identification, max_events, identify=True):
        raise _too_many("identifications", max_events)
    try:
        decoded = _identify_decoder.decode(identification)
    except msgspec.ValidationError as error:
        field, index, message = _identification_field_of(error)
        raise bad_request(
            FailureKind.INVALID_EVENTS,
            f"Invalid identification: {message}",
            events_with_invalid_fields={field: index},
        ) from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise _malformed("Invalid identification JSON", error) from None
    records = decoded if isinstance(decoded, list) else [decoded]
    _check_count(
        records, FailureKind.MISSING_IDENTIFICATION, "identification", "identifications", max_events
    )
    mixed = [
        i
        for i, record in enumerate(records)
        if record.user_properties and _mixes_operations(record.user_properties)
    ]
    if mixed:
        raise bad_request(
            FailureKind.INVALID_EVENTS,
            "user_properties mixes operations ($set, ...) with plain keys; put plain keys under $set",
            events_with_invalid_fields={"user_properties": mixed},
        )
    events = [identify_event(record) for record in records]
    for event in events:
        cut_long_strings(event)
    check_events(events)
    return events


def _identification_field_of(error: msgspec.ValidationError) -> tuple[str, list[int], str]:
    """The field a decode error names, and the record's index in an array of them."""
    field, message = _field_of(error)
    match = re.search(r" - at `\$\[(\d+)\]\.?([^.\[`]*)", str(error))
    if match is None:
        return field, [], message
    return match.group(2) or "identification", [int(match.group(1))], message


def _mixes_operations(properties: dict[str, Any]) -> bool:
    has_ops = any(key.startswith("$") for key in properties)
    has_plain = any(not key.startswith("$") for key in properties)
    return has_ops and has_plain


def identify_event(record: IdentifyRecord) -> Event:
    """The `$identify` event of one Identify API record. Its `paying` and `start_version`
    become user properties of those names: `paying` set, `start_version` set once (the
    version the user started on)."""
    fields = {name: getattr(record, name) for name in EVENT_FIELDS}
    fields["event_type"] = IDENTIFY_EVENT
    update = record.user_properties
    if record.paying is not None:
        update = with_operation(update, "$set", {"paying": record.paying})
    if record.start_version is not None:
        update = with_operation(update, "$setOnce", {"start_version": record.start_version})
    fields["user_properties"] = update
    return Event(**{k: v for k, v in fields.items() if v is not None})


def with_operation(
    update: Mapping[str, Any] | None, operation: str, values: dict[str, Any]
) -> dict[str, Any]:
    """A `user_properties` update with `values` added under `operation`; the update's own
    values for the same keys win (they are the more specific)."""
    merged = dict(update) if update else {}
    own = merged.get(operation)
    merged[operation] = {**values, **own} if isinstance(own, Mapping) else values
    return merged
