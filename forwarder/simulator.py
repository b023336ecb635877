"""A fake Iterable (the two bulk endpoints) for tests, benchmarks and `make run`.

It checks the Api-Key header, enforces per-(key, endpoint) rate limits as a strict
sliding one-second window (429 past it), item and byte caps, answers with Iterable's
partial-failure shapes, and injects faults (error rate, latency, downtime) on demand.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from forwarder.iterable import BulkUpdateRequest, Endpoint, TrackBulkRequest


class SimulatorConfig(msgspec.Struct, kw_only=True):
    api_keys: frozenset[str] | None = None  # None accepts any non-empty key
    track_bulk_per_second: float = 10
    bulk_update_per_second: float = 5
    max_request_bytes: int = 4_000_000
    max_events_per_request: int | None = None
    max_users_per_request: int | None = None
    error_rate: float = 0.0
    latency_ms: float = 0.0
    down_until: float = 0.0  # monotonic time until which every request gets 503
    require_user_first: bool = False
    invalid_email_suffix: str = "@invalid.test"
    forgotten_email_suffix: str = "@forgotten.test"
    seed: int = 0


@dataclass(slots=True)
class RequestRecord:
    at: float
    endpoint: str
    api_key: str
    items: int
    body_bytes: int
    status: int


@dataclass
class SimulatorState:
    """Everything the simulator saw, for tests to assert on."""

    events: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    known_emails: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_user_ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_ids: set[str] = field(default_factory=set)
    requests: list[RequestRecord] = field(default_factory=list)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    windows: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    max_window: Counter[str] = field(default_factory=Counter)
    max_items: Counter[str] = field(default_factory=Counter)
    max_bytes: Counter[str] = field(default_factory=Counter)

    @property
    def rate_limited(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status == 429)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": {f"{e} {s}": n for (e, s), n in sorted(self.statuses.items())},
            "events_received": len(self.events),
            "distinct_event_ids": len(self.event_ids),
            "users_received": len(self.users),
            "rate_limited": self.rate_limited,
            "max_requests_in_one_second": dict(self.max_window),
            "max_items_in_one_request": dict(self.max_items),
            "max_bytes_in_one_request": dict(self.max_bytes),
        }


STATE = web.AppKey("simulator_state", SimulatorState)
CONFIG = web.AppKey("simulator_config", SimulatorConfig)
_decoders = {
    Endpoint.TRACK_BULK: msgspec.json.Decoder(TrackBulkRequest),
    Endpoint.BULK_UPDATE: msgspec.json.Decoder(BulkUpdateRequest),
}


def _error(status: int, code: str, msg: str, params: Any = None) -> web.Response:
    return web.json_response({"msg": msg, "code": code, "params": params}, status=status)


def _handler(endpoint: Endpoint) -> Any:
    async def handle(request: web.Request) -> web.Response:
        config = request.app[CONFIG]
        state = request.app[STATE]
        rng: random.Random = request.app[RNG]
        arrived = time.monotonic()
        body = await request.read()
        key = request.headers.get("Api-Key", "")
        response = await _answer(endpoint, config, state, rng, key, body, arrived)
        state.statuses[(endpoint.value, response.status)] += 1
        state.requests.append(
            RequestRecord(arrived, endpoint.value, key, _count_items(body), len(body), response.status)
        )
        return response

    return handle


def _count_items(body: bytes) -> int:
    return body.count(b'"eventName"') or body.count(b'"email"') or 0


async def _answer(
    endpoint: Endpoint,
    config: SimulatorConfig,
    state: SimulatorState,
    rng: random.Random,
    key: str,
    body: bytes,
    arrived: float,
) -> web.Response:
    if not key or (config.api_keys is not None and key not in config.api_keys):
        return _error(401, "BadApiKey", "Invalid API key")
    rate = config.track_bulk_per_second if endpoint is Endpoint.TRACK_BULK else config.bulk_update_per_second
    window = state.windows.setdefault((key, endpoint.value), deque())
    while window and arrived - window[0] >= 1.0:
        window.popleft()
    if len(window) >= rate:
        return _error(429, "RateLimitExceeded", "Rate limit exceeded")
    window.append(arrived)
    state.max_window[endpoint.value] = max(state.max_window[endpoint.value], len(window))
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    if time.monotonic() < config.down_until:
        return _error(503, "ServiceUnavailable", "Down for maintenance (simulated)")
    if config.error_rate and rng.random() < config.error_rate:
        return _error(500, "InternalError", "Simulated failure")
    if len(body) > config.max_request_bytes:
        return _error(413, "RequestTooLarge", f"Body over {config.max_request_bytes} bytes")
    try:
        decoded = _decoders[endpoint].decode(body)
    except msgspec.ValidationError as error:
        text = str(error)
        path = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else None
        return _error(400, "RequestFieldsTypesMismatched", text, {"obj." + path: text} if path else None)
    except msgspec.DecodeError as error:
        return _error(400, "BadJsonBody", str(error))
    state.max_bytes[endpoint.value] = max(state.max_bytes[endpoint.value], len(body))
    if isinstance(decoded, TrackBulkRequest):
        cap = config.max_events_per_request
        if cap is not None and len(decoded.events) > cap:
            return _error(400, "BadParams", f"More than {cap} events")
        state.max_items[endpoint.value] = max(state.max_items[endpoint.value], len(decoded.events))
        return web.json_response(_track(config, state, decoded))
    cap = config.max_users_per_request
    if cap is not None and len(decoded.users) > cap:
        return _error(400, "BadParams", f"More than {cap} users")
    state.max_items[endpoint.value] = max(state.max_items[endpoint.value], len(decoded.users))
    return web.json_response(_update(config, state, decoded))


def _bad_email(config: SimulatorConfig, email: str | None) -> str | None:
    if email and email.endswith(config.invalid_email_suffix):
        return "invalid"
    if email and email.endswith(config.forgotten_email_suffix):
        return "forgotten"
    return None


def _track(config: SimulatorConfig, state: SimulatorState, request: TrackBulkRequest) -> dict[str, Any]:
    failed: dict[str, list[str]] = {
        "invalidEmails": [], "invalidUserIds": [], "notFoundEmails": [], "notFoundUserIds": [],
        "forgottenEmails": [], "forgottenUserIds": [],
    }
    success = 0
    for event in request.events:
        bad = _bad_email(config, event.email)
        if bad is not None:
            failed[f"{bad}Emails"].append(event.email or "")
            continue
        if config.require_user_first:
            known = (event.email and event.email.lower() in state.known_emails) or (
                event.userId and event.userId in state.known_user_ids
            )
            if not known:
                if event.email:
                    failed["notFoundEmails"].append(event.email)
                else:
                    failed["notFoundUserIds"].append(event.userId or "")
                continue
        state.events.append(msgspec.to_builtins(event))
        state.event_ids.add(event.id)
        success += 1
    return {
        "successCount": success,
        "failCount": len(request.events) - success,
        "createdFields": [],
        "filteredOutFields": [],
        "disallowedEventNames": [],
        "failedUpdates": failed,
    }


def _update(config: SimulatorConfig, state: SimulatorState, request: BulkUpdateRequest) -> dict[str, Any]:
    failed: dict[str, list[str]] = {
        "invalidEmails": [], "invalidUserIds": [], "notFoundEmails": [], "notFoundUserIds": [],
        "forgottenEmails": [], "forgottenUserIds": [], "conflictEmails": [], "conflictUserIds": [],
        "invalidDataEmails": [], "invalidDataUserIds": [],
    }
    success = 0
    for user in request.users:
        bad = _bad_email(config, user.email)
        if bad is not None:
            failed[f"{bad}Emails"].append(user.email or "")
            continue
        if not user.email and not user.userId:
            failed["invalidEmails"].append("")
            continue
        record = msgspec.to_builtins(user)
        state.users.append(record)
        profile: dict[str, Any] = {}
        if user.email:
            profile = state.known_emails.setdefault(user.email.lower(), {})
        if user.userId:
            state.known_user_ids[user.userId] = profile
        profile.update(user.dataFields or {})
        success += 1
    return {"successCount": success, "failCount": len(request.users) - success, "failedUpdates": failed}


RNG = web.AppKey("simulator_rng", random.Random)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


class FaultsUpdate(msgspec.Struct, kw_only=True):
    error_rate: float | None = None
    latency_ms: float | None = None
    down_for_seconds: float | None = None
    require_user_first: bool | None = None


async def _faults(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        update = msgspec.json.decode(await request.read(), type=FaultsUpdate)
    except msgspec.DecodeError as error:
        return web.json_response({"error": str(error)}, status=400)
    if update.error_rate is not None:
        config.error_rate = update.error_rate
    if update.latency_ms is not None:
        config.latency_ms = update.latency_ms
    if update.down_for_seconds is not None:
        config.down_until = time.monotonic() + update.down_for_seconds
    if update.require_user_first is not None:
        config.require_user_first = update.require_user_first
    return web.json_response(msgspec.to_builtins(config))


def build_simulator_app(config: SimulatorConfig, state: SimulatorState | None = None) -> web.Application:
    app = web.Application(client_max_size=max(config.max_request_bytes * 2, 1 << 20))
    app[CONFIG] = config
    app[STATE] = state if state is not None else SimulatorState()
    app[RNG] = random.Random(config.seed)
    for endpoint in Endpoint:
        app.router.add_post(f"/api/{endpoint.value}", _handler(endpoint))
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_post("/_sim/faults", _faults)
    return app


async def run_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    runner = web.AppRunner(build_simulator_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"Iterable simulator on http://{host}:{port}/api/ (stats: /_sim/stats)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
