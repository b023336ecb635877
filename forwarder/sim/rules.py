"""Pure checks of bulk bodies and items, and the answers Iterable gives for what they find."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from forwarder.iterable import Endpoint
from forwarder.sim.config import SimulatorConfig


class Reply(msgspec.Struct):
    """An answer before it becomes a web.Response: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = {}


def error(
    status: int, code: str, msg: str, params: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    """An error answer in Iterable's {"msg", "code", "params"} shape."""
    return Reply(status, {"msg": msg, "code": code, "params": params}, headers or {})


def _play_error(path: str, message: str) -> dict[str, list[dict[str, Any]]]:
    """`params` as Iterable's Play backend renders a JSON validation error for one path."""
    return {path: [{"msg": [message], "args": []}]}


_EXPECTED = {
    "int": "error.expected.jsnumber",
    "str": "error.expected.jsstring",
    "bool": "error.expected.jsboolean",
    "object": "error.expected.jsobject",
    "array": "error.expected.jsarray",
}


# --- whole-request answers ----------------------------------------------------------------


def validation_error(exc: msgspec.ValidationError) -> Reply:
    """msgspec's "Expected `int`, got `str` - at `$.events[1].createdAt`" as Iterable's 400."""
    text = str(exc)
    message, _, where = text.partition(" - at `$")
    path = "obj" + where.rstrip("`")
    if message.startswith("Object missing required field"):
        field = message.rsplit("`", 2)[-2]
        path, key = f"{path}.{field}", "error.path.missing"
    else:
        expected = message.split("`")[1] if message.count("`") >= 2 else ""
        key = next((v for k, v in _EXPECTED.items() if expected.startswith(k)), "error.invalid")
    return error(400, "BadJsonBody", f"Invalid JSON body: {text}", _play_error(path, key))


def too_large(size: int, cap: int) -> Reply:
    """The answer to a body past the byte cap."""
    # Iterable documents the 4 MB cap but not its answer; an HTTP front end says 413.
    return error(413, "BatchTooLarge", f"Request body of {size} bytes exceeds {cap} bytes")


def too_many(endpoint: Endpoint, count: int, cap: int | None) -> Reply | None:
    """The answer to a body with more items than the cap, if it has."""
    if cap is not None and count > cap:
        return error(
            400, "BatchTooLarge", f"{count} {endpoint.list_key} exceeds the limit of {cap}"
        )
    return None


# --- per-item checks ----------------------------------------------------------------------


def identity_problem(config: SimulatorConfig, email: str | None, user_id: str | None) -> str | None:
    """The failure list an item's identity lands in, or None when Iterable takes it."""
    if email:
        if "@" not in email or email.endswith(config.invalid_email_suffix):
            return "invalidEmails"
        if email.endswith(config.forgotten_email_suffix):
            return "forgottenEmails"
    # The spec's invalid userIds: "empty, too long, or containing non-ASCII or
    # non-printable characters or a trailing space" (empty alone is refused earlier).
    if user_id and (
        len(user_id) > 512
        or not user_id.isascii()
        or not user_id.isprintable()
        or user_id[-1] == " "
    ):
        return "invalidUserIds"
    return None


def failed_value(name: str, email: str | None, user_id: str | None) -> str:
    """What a failure list `name` reports for an item: its email or its userId."""
    return (email or "") if "Email" in name else (user_id or "")


def item_refusal(
    endpoint: Endpoint, index: int, email: str | None, user_id: str | None, fields_ok: bool
) -> Reply | None:
    """A problem that makes Iterable refuse the WHOLE bulk request, naming the item."""
    at = f"obj.{endpoint.list_key}[{index}]"
    if not email and not user_id:
        return error(
            400,
            "BadParams",
            "Either email or userId must be provided",
            _play_error(at, "error.path.missing"),
        )
    if not fields_ok:
        return error(
            400,
            "BadJsonBody",
            "dataFields must be an object",
            _play_error(f"{at}.dataFields", _EXPECTED["object"]),
        )
    return None


def type_refusal(
    known_types: Mapping[tuple[str, str], str],
    new_types: dict[tuple[str, str], str],
    at: str,
    scope: str,
    fields: dict[str, Any] | None,
) -> Reply | None:
    """A field whose JSON type differs from the one Iterable first saw (in `scope`).

    Types first seen here are added to `new_types`, not to `known_types`.
    """
    for field, value in (fields or {}).items():
        found = _json_type(value)
        if found is None:
            continue
        known = known_types.get((scope, field)) or new_types.get((scope, field))
        if known is None:
            new_types[(scope, field)] = found
        elif known != found:
            message = f"Field {field!r} is {known} but this request sends {found}"
            params = _play_error(f"{at}.dataFields.{field}", f"error.expected.js{known}")
            return error(400, "RequestFieldsTypesMismatched", message, params)
    return None


def _json_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def fields_ok(raw: msgspec.Raw) -> bool:
    """Whether raw dataFields are absent, an object, or null."""
    return not len(raw) or bytes(raw)[:1] in (b"{", b"n")


def fields_of(raw: msgspec.Raw) -> dict[str, Any] | None:
    """Raw dataFields decoded, when they are an object."""
    value = msgspec.json.decode(raw) if len(raw) else None
    return value if isinstance(value, dict) else None


# --- partial-failure answers --------------------------------------------------------------

# The lists of `failedUpdates`, in the spec's order, per endpoint.
_FAILURES = {
    Endpoint.TRACK_BULK: (
        "forgottenEmails",
        "forgottenUserIds",
        "invalidEmails",
        "invalidUserIds",
        "notFoundEmails",
        "notFoundUserIds",
    ),
    Endpoint.BULK_UPDATE: (
        "conflictEmails",
        "conflictUserIds",
        "forgottenEmails",
        "forgottenUserIds",
        "invalidDataEmails",
        "invalidDataUserIds",
        "invalidEmails",
        "invalidUserIds",
        "notFoundEmails",
        "notFoundUserIds",
    ),
}


def failure_lists(endpoint: Endpoint) -> dict[str, list[str]]:
    """The empty `failedUpdates` lists of an endpoint's answer, in the spec's order."""
    return {name: [] for name in _FAILURES[endpoint]}


def summary(
    taken: int, total: int, failed: dict[str, list[str]], disallowed: list[str] | None = None
) -> Reply:
    """The 200 of a bulk request: BulkTrackResponse when `disallowed` is given, else
    UserBulkUpdateListResponse."""
    body: dict[str, Any] = {
        "successCount": taken,
        "failCount": total - taken,
        "createdFields": [],
        "filteredOutFields": [],
    }
    if disallowed is not None:
        body["disallowedEventNames"] = disallowed
    body["failedUpdates"] = failed
    # Deprecated top-level copies the spec still lists.
    body["invalidEmails"] = failed["invalidEmails"]
    body["invalidUserIds"] = failed["invalidUserIds"]
    return Reply(200, body)
