"""Iterable's answers as data (pure): the bulk and error bodies, failure lists, Retry-After.

From Iterable's OpenAPI spec (repository Iterable/api-client, `api-docs.json`):
events/trackBulk answers 200 with BulkTrackResponse and users/bulkUpdate with
UserBulkUpdateListResponse, both with successCount, failCount and failedUpdates
(FailedEventUpdates / FailedUserUpdates); errors are IterableApiResponse (msg, code,
params) with the codes of `src/types/common.ts`. Everything is read as optional.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from forwarder.errors import MAX_MESSAGE, scrub
from forwarder.values import as_integer


class FailedUpdates(msgspec.Struct, kw_only=True):
    """`failedUpdates`: FailedEventUpdates (trackBulk) and FailedUserUpdates (bulkUpdate)."""

    invalidEmails: list[str] = []
    invalidUserIds: list[str] = []
    notFoundEmails: list[str] = []
    notFoundUserIds: list[str] = []
    forgottenEmails: list[str] = []
    forgottenUserIds: list[str] = []
    # bulkUpdate only.
    conflictEmails: list[str] = []
    conflictUserIds: list[str] = []
    invalidDataEmails: list[str] = []
    invalidDataUserIds: list[str] = []


class BulkResponse(msgspec.Struct, kw_only=True):
    """A 200 answer of either bulk endpoint (BulkTrackResponse / UserBulkUpdateListResponse)."""

    successCount: int | None = None
    failCount: int | None = None
    # trackBulk only, at the top level (not under failedUpdates).
    disallowedEventNames: list[str] = []
    # Deprecated top-level copies ("use failedUpdates instead"), still read.
    invalidEmails: list[str] = []
    invalidUserIds: list[str] = []
    failedUpdates: FailedUpdates | None = None
    # Not in the spec for these endpoints; an error code in a 200 is read as a warning sign.
    code: str | None = None
    msg: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """IterableApiResponse: what every non-200 answer carries (when it is JSON at all)."""

    msg: str | None = None
    code: str | None = None
    params: Any = None


IdentityKind = Literal["email", "userId", "eventName"]

# Lists of field names, not identities: never failures.
FIELD_LISTS = frozenset({"createdFields", "filteredOutFields"})


def identity_kind(name: str) -> IdentityKind | None:
    """Which item field a failure list's values are, from its name; None if it cannot say."""
    if name.endswith("EventNames"):
        return "eventName"
    if "Email" in name:
        return "email"
    if "UserId" in name:
        return "userId"
    return None


def read_bulk_response(raw: Mapping[str, Any]) -> BulkResponse:
    """The known fields of a decoded 200 body; wrong types are dropped, never raised."""
    failed = raw.get("failedUpdates")
    return BulkResponse(
        successCount=as_integer(raw.get("successCount")),
        failCount=as_integer(raw.get("failCount")),
        disallowedEventNames=_strings(raw.get("disallowedEventNames")),
        invalidEmails=_strings(raw.get("invalidEmails")),
        invalidUserIds=_strings(raw.get("invalidUserIds")),
        failedUpdates=(
            FailedUpdates(
                **{name: _strings(failed.get(name)) for name in FailedUpdates.__struct_fields__}
            )
            if isinstance(failed, Mapping)
            else None
        ),
        code=raw.get("code") if isinstance(raw.get("code"), str) else None,
        msg=raw.get("msg") if isinstance(raw.get("msg"), str) else None,
    )


def failure_lists(
    response: BulkResponse, raw: Mapping[str, Any], track: bool = False
) -> dict[str, list[str]]:
    """Every non-empty list of failed identities, known or not, by name.

    A name present both at the top level (deprecated) and under failedUpdates is merged.
    Unknown lists are kept when their name says what they hold (Email, UserId,
    EventNames); lists of field names are not failures.

    On trackBulk (`track`), the spec describes the top-level `invalidUserIds` as "userId
    values that were not found": its values that failedUpdates does not list as invalid
    are read as notFoundUserIds.
    """
    lists: dict[str, list[str]] = {}

    def add(name: str, values: list[str]) -> None:
        if values:
            lists.setdefault(name, []).extend(values)

    add("disallowedEventNames", response.disallowedEventNames)
    add("invalidEmails", response.invalidEmails)
    if track:
        nested = response.failedUpdates
        invalid = set(nested.invalidUserIds) if nested is not None else set()
        add("invalidUserIds", [v for v in response.invalidUserIds if v in invalid])
        add("notFoundUserIds", [v for v in response.invalidUserIds if v not in invalid])
    else:
        add("invalidUserIds", response.invalidUserIds)
    if response.failedUpdates is not None:
        for name in FailedUpdates.__struct_fields__:
            add(name, getattr(response.failedUpdates, name))
    known = set(BulkResponse.__struct_fields__) | set(FailedUpdates.__struct_fields__) | FIELD_LISTS
    nested = raw.get("failedUpdates")
    for source in (raw, nested if isinstance(nested, Mapping) else {}):
        for name, value in source.items():
            if name in known or not isinstance(value, list) or identity_kind(name) is None:
                continue
            add(name, _strings(value))
    return lists


def read_error(body: bytes) -> ErrorResponse:
    """The msg/code/params of an error body; a body that is not JSON becomes the msg."""
    raw = decode_json(body)
    if isinstance(raw, dict):
        msg = raw.get("msg")
        code = raw.get("code")
        return ErrorResponse(
            msg=msg if isinstance(msg, str) else None,
            code=code if isinstance(code, str) else None,
            params=raw.get("params"),
        )
    return ErrorResponse(msg=status_text(body) or None)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad.

    Iterable documents no Retry-After; we honour one when a proxy or Iterable sends it.
    Capping it is the retry policy's job.
    """
    value = header_value(headers, "Retry-After")
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
            moment = moment.replace(tzinfo=datetime.UTC)
        return max(0.0, moment.timestamp() - (time.time() if now is None else now))
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by its name in any case (tests pass plain dicts); None if absent."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, text in headers.items():
            if key.lower() == lowered:
                return text
    return value


def describe(status: int, body: bytes, error: ErrorResponse | None = None) -> str:
    """The status, Iterable's code and message, one line, keys masked: "400 BadJsonBody: msg"."""
    error = read_error(body) if error is None else error
    text = str(status)
    if error.code:
        text += f" {error.code}"
    if error.msg:
        text += f": {scrub(error.msg)}"
    return text


def status_text(body: bytes) -> str:
    """A short, single-line, key-free excerpt of a body that is not JSON."""
    return scrub(body[: MAX_MESSAGE * 2].decode("utf-8", "replace"))


def decode_json(body: bytes) -> Any:
    if not body or not body.strip():
        return None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]
