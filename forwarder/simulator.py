"""A fake Iterable (its two bulk endpoints) on aiohttp, for tests, benchmarks and `make run`."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from forwarder.iterable import Endpoint

# It answers with the shapes of Iterable's OpenAPI spec (repository Iterable/api-client,
# `api-docs.json`): trackBulk -> BulkTrackResponse, bulkUpdate -> UserBulkUpdateListResponse,
# errors as {"msg", "code", "params"}. On top it enforces the per-(key, endpoint) rate
# limits as a strict sliding one-second window and the byte and item caps, produces
# partial failures on demand, injects faults, and records what it saw for tests
# (SimulatorState) and benchmarks (GET /_sim/stats).


class SimulatorConfig(msgspec.Struct, kw_only=True):
    """Knobs of the fake; mutable at run time (tests assign fields, `/_sim/faults` too)."""

    api_keys: frozenset[str] | None = None  # None accepts any non-empty key
    track_bulk_per_second: float = 10  # Iterable's spec: 10 requests/s per project
    bulk_update_per_second: float = 5  # Iterable's spec: 5 requests/s per project
    max_request_bytes: int = 4_000_000  # Iterable's spec: 4 MB for users/bulkUpdate
    max_events_per_request: int | None = None  # Iterable sets none; for tests of our caps
    max_users_per_request: int | None = None
    error_rate: float = 0.0  # fraction of admitted requests answered 500 (seeded random)
    latency_ms: float = 0.0  # added to every answer
    down_until: float = 0.0  # time.monotonic() until which every request gets 503
    # trackBulk items whose user was never bulkUpdated are reported in notFound*.
    require_user_first: bool = False
    invalid_email_suffix: str = "@invalid.test"  # reported in invalidEmails
    forgotten_email_suffix: str = "@forgotten.test"  # reported in forgottenEmails
    seed: int = 0
    # Event names the project blocks: reported in disallowedEventNames.
    disallowed_event_names: frozenset[str] = frozenset()
    # Refuse (400 RequestFieldsTypesMismatched, naming the item) a request whose item gives
    # a dataFields field another JSON type than before: per event name for events, per
    # project for users, as Iterable does. Off by default: it decodes every event's fields.
    check_field_types: bool = False
    # Iterable documents no Retry-After; with this, 429s and 503s carry one.
    send_retry_after: bool = False
    # Keep every accepted item for tests (`events`, `users`); off for long runs, where
    # only counts and the distinct event ids are kept.
    record_items: bool = True


# --- what arrives: Iterable's request shapes, as lenient as Iterable is -----------------


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


class SimUser(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An element of bulkUpdate's `users` (OptionalApiUser)."""

    email: str | None = None
    userId: str | None = None
    dataFields: dict[str, Any] | None = None
    preferUserId: bool | None = None
    mergeNestedObjects: bool | None = None


class SimTrackBulk(msgspec.Struct):
    events: list[SimEvent]


class SimBulkUpdate(msgspec.Struct):
    users: list[SimUser]
    createNewFields: bool | None = None


class FaultsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /_sim/faults`: only the fields given change."""

    error_rate: float | None = None
    latency_ms: float | None = None
    down_for_seconds: float | None = None
    require_user_first: bool | None = None


_DECODERS: dict[Endpoint, msgspec.json.Decoder[Any]] = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(SimTrackBulk),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(SimBulkUpdate),
}
_FAULTS_DECODER = msgspec.json.Decoder(FaultsUpdate)
_ENCODER = msgspec.json.Encoder()


# --- what the simulator saw -------------------------------------------------------------


@dataclass(slots=True)
class RequestRecord:
    """One request to a bulk endpoint, whatever its answer."""

    at: float  # time.monotonic() at arrival
    endpoint: str
    api_key: str
    items: int  # 0 when the body was not decoded
    body_bytes: int
    status: int


class SimulatorState:
    """Everything the simulator saw, for tests to assert on.

    `events` / `users` are the items Iterable took (answered as successes), as dicts, in
    arrival order; items reported as failures are only counted (`failed`). The simulator
    does not dedupe: a resent event id appears twice in `events`, once in `event_ids`.
    """

    def __init__(self) -> None:
        self.event_ids: set[str] = set()
        # Profiles by lowercased email and by userId; one dict of merged dataFields per
        # user, shared by both maps when the user has both identities.
        self.known_emails: dict[str, dict[str, Any]] = {}
        self.known_user_ids: dict[str, dict[str, Any]] = {}
        self.requests: list[RequestRecord] = []
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failed: Counter[tuple[str, str]] = Counter()  # (endpoint, list) -> items
        self.received: Counter[str] = Counter()  # endpoint -> items taken
        self.max_requests_in_one_second: Counter[str] = Counter()
        self.max_items: Counter[str] = Counter()
        self.max_bytes: Counter[str] = Counter()
        # Rate limiter: admitted arrivals per (key, endpoint); `_seen`: every arrival with
        # a good key, whatever its answer, to measure the sender's pacing.
        self._admitted: dict[tuple[str, str], deque[float]] = {}
        self._seen: dict[tuple[str, str], deque[float]] = {}
        # First JSON type seen per (scope, field), for check_field_types.
        self.field_types: dict[tuple[str, str], str] = {}
        self.event_records: list[SimEvent] = []  # decoded into `events` on first read
        self._events: list[dict[str, Any]] = []
        self.user_records: list[SimUser] = []
        self._users: list[dict[str, Any]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events taken, as dicts shaped like the request's items (fields decoded now)."""
        for record in self.event_records[len(self._events) :]:
            self._events.append(_event_dict(record))
        return self._events

    @property
    def users(self) -> list[dict[str, Any]]:
        """User updates taken, as dicts shaped like the request's items."""
        for record in self.user_records[len(self._users) :]:
            self._users.append(msgspec.to_builtins(record))
        return self._users

    @property
    def rate_limited(self) -> int:
        """Requests answered 429."""
        return sum(n for (_, status), n in self.statuses.items() if status == 429)

    def profile(
        self, email: str | None = None, user_id: str | None = None
    ) -> dict[str, Any] | None:
        """A user's merged dataFields, by email (any case) or userId; None if unknown."""
        if email is not None:
            return self.known_emails.get(email.lower())
        if user_id is not None:
            return self.known_user_ids.get(user_id)
        return None

    def stats(self) -> dict[str, Any]:
        """The figures `GET /_sim/stats` serves."""
        requests: dict[str, dict[str, int]] = {}
        for (endpoint, status), n in sorted(self.statuses.items()):
            requests.setdefault(endpoint, {})[str(status)] = n
        failed: dict[str, dict[str, int]] = {}
        for (endpoint, name), n in sorted(self.failed.items()):
            failed.setdefault(endpoint, {})[name] = n
        return {
            "requests": requests,
            "rate_limited": self.rate_limited,
            "items_received": dict(self.received),
            "items_failed": failed,
            "events_received": self.received[Endpoint.TRACK_BULK.value],
            "distinct_event_ids": len(self.event_ids),
            "users_received": self.received[Endpoint.BULK_UPDATE.value],
            "known_users": len(
                {id(p) for p in (*self.known_emails.values(), *self.known_user_ids.values())}
            ),
            "max_requests_in_one_second": dict(self.max_requests_in_one_second),
            "max_items_in_one_request": dict(self.max_items),
            "max_bytes_in_one_request": dict(self.max_bytes),
        }

    # --- bookkeeping the handlers call --------------------------------------------------

    def arrive(self, key: str, endpoint: Endpoint, at: float) -> None:
        """Count an arrival with a good key in its one-second window, for the pacing figure."""
        window = self._seen.setdefault((key, endpoint.value), deque())
        _slide(window, at)
        window.append(at)
        self.max_requests_in_one_second[endpoint.value] = max(
            self.max_requests_in_one_second[endpoint.value], len(window)
        )

    def admit(self, key: str, endpoint: Endpoint, at: float, rate: float) -> float | None:
        """Take the request into the limiter's window; else the seconds until a slot frees.

        Strict sliding window by arrival time: refused when `rate` requests were already
        admitted in the last 1.0 s. Refused requests do not enter the window.
        """
        window = self._admitted.setdefault((key, endpoint.value), deque())
        _slide(window, at)
        if len(window) >= rate:
            return max(0.0, window[0] + 1.0 - at)
        window.append(at)
        return None


def _slide(window: deque[float], at: float) -> None:
    while window and at - window[0] >= 1.0:
        window.popleft()


def _event_dict(record: SimEvent) -> dict[str, Any]:
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


STATE_KEY = web.AppKey("simulator_state", SimulatorState)
CONFIG_KEY = web.AppKey("simulator_config", SimulatorConfig)
RNG_KEY = web.AppKey("simulator_rng", random.Random)


# --- answers ------------------------------------------------------------------------------


class Reply(msgspec.Struct):
    """An answer before it becomes a web.Response: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = {}


def _error(
    status: int, code: str, msg: str, params: Any = None, headers: dict[str, str] | None = None
) -> Reply:
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


def _validation_error(error: msgspec.ValidationError) -> Reply:
    """msgspec's "Expected `int`, got `str` - at `$.events[1].createdAt`" as Iterable's 400."""
    text = str(error)
    message, _, where = text.partition(" - at `$")
    path = "obj" + where.rstrip("`")
    if message.startswith("Object missing required field"):
        field = message.rsplit("`", 2)[-2]
        path, key = f"{path}.{field}", "error.path.missing"
    else:
        expected = message.split("`")[1] if message.count("`") >= 2 else ""
        key = next((v for k, v in _EXPECTED.items() if expected.startswith(k)), "error.invalid")
    return _error(400, "BadJsonBody", f"Invalid JSON body: {text}", _play_error(path, key))


async def _bulk(endpoint: Endpoint, request: web.Request) -> web.Response:
    arrived = time.monotonic()
    config, state = request.app[CONFIG_KEY], request.app[STATE_KEY]
    key = request.headers.get("Api-Key", "")
    key_ok = bool(key) and (config.api_keys is None or key in config.api_keys)
    # Taken before the first await, so the limiter sees requests in arrival order and
    # its windows stay sorted.
    early = _gate(endpoint, config, state, key if key_ok else None, arrived)
    try:
        body = await request.read()
        size = len(body)
    except web.HTTPRequestEntityTooLarge:  # past client_max_size: answered as our own cap
        body, size = b"", request.content_length or 0
        early = early or _too_large(size, config.max_request_bytes)
    if key_ok:  # what the sender sent, whatever the answer: a cap it broke shows here
        state.max_bytes[endpoint.value] = max(state.max_bytes[endpoint.value], size)
    if config.latency_ms > 0:
        await asyncio.sleep(config.latency_ms / 1000)

    reply, items = early, 0
    if reply is None:
        reply, items = _process(endpoint, config, state, request.app[RNG_KEY], body)
    state.statuses[(endpoint.value, reply.status)] += 1
    state.requests.append(RequestRecord(arrived, endpoint.value, key, items, size, reply.status))
    return web.Response(
        status=reply.status,
        body=_ENCODER.encode(reply.body),
        content_type="application/json",
        headers=reply.headers,
    )


def _gate(
    endpoint: Endpoint, config: SimulatorConfig, state: SimulatorState, key: str | None, at: float
) -> Reply | None:
    """The answers the headers decide: downtime, a bad key (None), the rate limit."""
    if key is not None:
        state.arrive(key, endpoint, at)
    if at < config.down_until:
        wait = math.ceil(config.down_until - at)
        headers = {"Retry-After": str(wait)} if config.send_retry_after else {}
        return _error(
            503, "GenericError", "Service unavailable (simulated downtime)", headers=headers
        )
    if key is None:
        return _error(401, "BadApiKey", "Invalid API key")
    if endpoint is Endpoint.TRACK_BULK:
        rate = config.track_bulk_per_second
    else:
        rate = config.bulk_update_per_second
    wait_for_slot = state.admit(key, endpoint, at, rate)
    if wait_for_slot is None:
        return None
    headers = (
        {"Retry-After": str(max(1, math.ceil(wait_for_slot)))} if config.send_retry_after else {}
    )
    message = f"Rate limit of {rate:g} requests/s exceeded"
    return _error(429, "RateLimitExceeded", message, headers=headers)


def _too_large(size: int, cap: int) -> Reply:
    # Iterable documents the 4 MB cap but not its answer; an HTTP front end says 413.
    return _error(413, "BatchTooLarge", f"Request body of {size} bytes exceeds {cap} bytes")


def _process(
    endpoint: Endpoint,
    config: SimulatorConfig,
    state: SimulatorState,
    rng: random.Random,
    body: bytes,
) -> tuple[Reply, int]:
    """An admitted request: injected 500s, caps, decoding, then per-item answers."""
    if config.error_rate > 0 and rng.random() < config.error_rate:
        return _error(500, "GenericError", "Internal error (simulated)"), 0
    if len(body) > config.max_request_bytes:
        return _too_large(len(body), config.max_request_bytes), 0
    try:
        decoded = _DECODERS[endpoint].decode(body)
    except msgspec.ValidationError as error:
        return _validation_error(error), 0
    except msgspec.DecodeError as error:
        return _error(400, "BadJsonBody", f"Invalid JSON body: {error}"), 0
    if isinstance(decoded, SimTrackBulk):
        count, cap = len(decoded.events), config.max_events_per_request
    else:
        count, cap = len(decoded.users), config.max_users_per_request
    state.max_items[endpoint.value] = max(state.max_items[endpoint.value], count)
    if cap is not None and count > cap:
        return _error(
            400, "BatchTooLarge", f"{count} {endpoint.list_key} exceeds the limit of {cap}"
        ), count
    if isinstance(decoded, SimTrackBulk):
        return _track_bulk(config, state, decoded.events), count
    return _bulk_update(config, state, decoded.users), count


# --- per-item checks ----------------------------------------------------------------------


def _identity_problem(
    config: SimulatorConfig, email: str | None, user_id: str | None
) -> str | None:
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


def _failed_value(name: str, email: str | None, user_id: str | None) -> str:
    return (email or "") if "Email" in name else (user_id or "")


def _item_refusal(
    endpoint: Endpoint, index: int, email: str | None, user_id: str | None, fields_ok: bool
) -> Reply | None:
    """A problem that makes Iterable refuse the WHOLE bulk request, naming the item."""
    at = f"obj.{endpoint.list_key}[{index}]"
    if not email and not user_id:
        return _error(
            400,
            "BadParams",
            "Either email or userId must be provided",
            _play_error(at, "error.path.missing"),
        )
    if not fields_ok:
        return _error(
            400,
            "BadJsonBody",
            "dataFields must be an object",
            _play_error(f"{at}.dataFields", _EXPECTED["object"]),
        )
    return None


def _type_refusal(
    state: SimulatorState,
    new_types: dict[tuple[str, str], str],
    at: str,
    scope: str,
    fields: dict[str, Any] | None,
) -> Reply | None:
    """A field whose JSON type differs from the one Iterable first saw (in `scope`)."""
    for field, value in (fields or {}).items():
        found = _json_type(value)
        if found is None:
            continue
        known = state.field_types.get((scope, field)) or new_types.get((scope, field))
        if known is None:
            new_types[(scope, field)] = found
        elif known != found:
            message = f"Field {field!r} is {known} but this request sends {found}"
            params = _play_error(f"{at}.dataFields.{field}", f"error.expected.js{known}")
            return _error(400, "RequestFieldsTypesMismatched", message, params)
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


def _fields_ok(raw: msgspec.Raw) -> bool:
    return not len(raw) or bytes(raw)[:1] in (b"{", b"n")  # absent, an object, or null


def _fields_of(raw: msgspec.Raw) -> dict[str, Any] | None:
    value = msgspec.json.decode(raw) if len(raw) else None
    return value if isinstance(value, dict) else None


def _track_bulk(config: SimulatorConfig, state: SimulatorState, events: list[SimEvent]) -> Reply:
    endpoint = Endpoint.TRACK_BULK
    new_types: dict[tuple[str, str], str] = {}
    for index, event in enumerate(events):
        refusal = _item_refusal(
            endpoint, index, event.email, event.userId, _fields_ok(event.dataFields)
        )
        if refusal is None and config.check_field_types:
            at = f"obj.events[{index}]"
            refusal = _type_refusal(
                state, new_types, at, "event:" + event.eventName, _fields_of(event.dataFields)
            )
        if refusal is not None:
            return refusal
    state.field_types.update(new_types)

    failed: dict[str, list[str]] = {
        "forgottenEmails": [],
        "forgottenUserIds": [],
        "invalidEmails": [],
        "invalidUserIds": [],
        "notFoundEmails": [],
        "notFoundUserIds": [],
    }
    disallowed: dict[str, None] = {}  # an ordered set of names
    taken = 0
    name = endpoint.value
    keep = config.record_items
    for event in events:
        if event.eventName in config.disallowed_event_names:
            disallowed[event.eventName] = None
            state.failed[(name, "disallowedEventNames")] += 1
            continue
        problem = _identity_problem(config, event.email, event.userId)
        if (
            problem is None
            and config.require_user_first
            and not (
                (event.email and event.email.lower() in state.known_emails)
                or (event.userId and event.userId in state.known_user_ids)
            )
        ):
            problem = "notFoundEmails" if event.email else "notFoundUserIds"
        if problem is not None:
            failed[problem].append(_failed_value(problem, event.email, event.userId))
            state.failed[(name, problem)] += 1
            continue
        if keep:
            state.event_records.append(event)
        if event.id is not None:
            state.event_ids.add(event.id)
        taken += 1
    state.received[name] += taken
    return Reply(
        200,
        {
            "successCount": taken,
            "failCount": len(events) - taken,
            "createdFields": [],
            "filteredOutFields": [],
            "disallowedEventNames": list(disallowed),
            "failedUpdates": failed,
            # Deprecated top-level copies the spec still lists.
            "invalidEmails": failed["invalidEmails"],
            "invalidUserIds": failed["invalidUserIds"],
        },
    )


def _bulk_update(config: SimulatorConfig, state: SimulatorState, users: list[SimUser]) -> Reply:
    endpoint = Endpoint.BULK_UPDATE
    new_types: dict[tuple[str, str], str] = {}
    for index, user in enumerate(users):
        refusal = _item_refusal(endpoint, index, user.email, user.userId, True)
        if refusal is None and config.check_field_types:
            refusal = _type_refusal(
                state, new_types, f"obj.users[{index}]", "user", user.dataFields
            )
        if refusal is not None:
            return refusal
    state.field_types.update(new_types)

    failed: dict[str, list[str]] = {
        "conflictEmails": [],
        "conflictUserIds": [],
        "forgottenEmails": [],
        "forgottenUserIds": [],
        "invalidDataEmails": [],
        "invalidDataUserIds": [],
        "invalidEmails": [],
        "invalidUserIds": [],
        "notFoundEmails": [],
        "notFoundUserIds": [],
    }
    taken = 0
    name = endpoint.value
    for user in users:
        problem = _identity_problem(config, user.email, user.userId)
        if problem is not None:
            failed[problem].append(_failed_value(problem, user.email, user.userId))
            state.failed[(name, problem)] += 1
            continue
        _merge_profile(state, user)
        if config.record_items:
            state.user_records.append(user)
        taken += 1
    state.received[name] += taken
    return Reply(
        200,
        {
            "successCount": taken,
            "failCount": len(users) - taken,
            "createdFields": [],
            "filteredOutFields": [],
            "failedUpdates": failed,
            "invalidEmails": failed["invalidEmails"],
            "invalidUserIds": failed["invalidUserIds"],
        },
    )


def _merge_profile(state: SimulatorState, user: SimUser) -> None:
    """Apply a user update to the one profile its email and userId share."""
    email = user.email.lower() if user.email else None
    profile = state.known_emails.get(email) if email else None
    if profile is None and user.userId:
        profile = state.known_user_ids.get(user.userId)
    if profile is None:
        profile = {}
    if email:
        state.known_emails[email] = profile
    if user.userId:
        state.known_user_ids[user.userId] = profile
    for field, value in (user.dataFields or {}).items():
        old = profile.get(field)
        if user.mergeNestedObjects and isinstance(value, dict) and isinstance(old, dict):
            profile[field] = {**old, **value}  # merge top-level objects, not overwrite
        else:
            profile[field] = value


# --- admin routes -------------------------------------------------------------------------


async def _stats(request: web.Request) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(request.app[STATE_KEY].stats()), content_type="application/json"
    )


async def _faults(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    try:
        update = _FAULTS_DECODER.decode(await request.read())
    except msgspec.DecodeError as error:
        return web.json_response({"error": str(error)}, status=400)
    if update.error_rate is not None and not 0.0 <= update.error_rate <= 1.0:
        return web.json_response({"error": "error_rate must be within [0, 1]"}, status=400)
    for name in ("latency_ms", "down_for_seconds"):
        value = getattr(update, name)
        if value is not None and value < 0:
            return web.json_response({"error": f"{name} must be 0 or more"}, status=400)
    if update.error_rate is not None:
        config.error_rate = update.error_rate
    if update.latency_ms is not None:
        config.latency_ms = update.latency_ms
    if update.down_for_seconds is not None:
        config.down_until = time.monotonic() + update.down_for_seconds
    if update.require_user_first is not None:
        config.require_user_first = update.require_user_first
    return web.json_response(
        {
            "error_rate": config.error_rate,
            "latency_ms": config.latency_ms,
            "down_for_seconds": max(0.0, config.down_until - time.monotonic()),
            "require_user_first": config.require_user_first,
        }
    )


def _route(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await _bulk(endpoint, request)

    return handle


def build_simulator_app(
    config: SimulatorConfig, state: SimulatorState | None = None
) -> web.Application:
    """The fake's aiohttp app; its state is `app[STATE_KEY]` (the one given, or a new one)."""
    # Room past the cap so an oversize body is read and answered by our own 413.
    app = web.Application(client_max_size=config.max_request_bytes * 2 + (1 << 20))
    app[CONFIG_KEY] = config
    app[STATE_KEY] = state if state is not None else SimulatorState()
    app[RNG_KEY] = random.Random(config.seed)
    for endpoint in Endpoint:
        app.router.add_post(f"/api/{endpoint.value}", _route(endpoint))
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_post("/_sim/faults", _faults)
    return app


async def run_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the fake until cancelled; prints one line once it listens.

    Items are not recorded (`record_items` off): no one outside this process can read
    them, and at full speed they would cost about 1 GB per 1.5 million events; the counts,
    the distinct event ids and the profiles are kept for `/_sim/stats` and the checks.
    """
    config = msgspec.structs.replace(config, record_items=False)
    runner = web.AppRunner(build_simulator_app(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        print(
            f"Iterable simulator listening on http://{host}:{bound}/api/ "
            f"(trackBulk {config.track_bulk_per_second:g}/s, bulkUpdate {config.bulk_update_per_second:g}/s; "
            f"stats: /_sim/stats)",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
