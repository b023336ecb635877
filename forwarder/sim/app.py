"""The simulator's aiohttp app: the API and admin routes, and run_simulator to serve it."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

import forwarder.sim.rules as rules
from forwarder.iterable import Endpoint
from forwarder.sim.bulk import process
from forwarder.sim.config import SimulatorConfig, change_faults
from forwarder.sim.recent import describe
from forwarder.sim.rules import Reply
from forwarder.sim.state import RequestRecord, SimulatorState

STATE_KEY = web.AppKey("simulator_state", SimulatorState)
CONFIG_KEY = web.AppKey("simulator_config", SimulatorConfig)
RNG_KEY = web.AppKey("simulator_rng", random.Random)

_ENCODER = msgspec.json.Encoder()


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
        early = early or rules.too_large(size, config.max_request_bytes)
    if key_ok:  # what the sender sent, whatever the answer: a cap it broke shows here
        state.max_bytes[endpoint.value] = max(state.max_bytes[endpoint.value], size)
    if config.latency_ms > 0:
        await asyncio.sleep(config.latency_ms / 1000)

    reply, items = early, 0
    if reply is None:
        reply, items = process(endpoint, config, state, request.app[RNG_KEY], body)
    state.statuses[(endpoint.value, reply.status)] += 1
    state.requests.append(RequestRecord(arrived, endpoint.value, key, items, size, reply.status))
    state.recent.add(endpoint.value, reply.status, body)
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
        return rules.error(
            503, "GenericError", "Service unavailable (simulated downtime)", headers=headers
        )
    if key is None:
        return rules.error(401, "BadApiKey", "Invalid API key")
    if endpoint is Endpoint.TRACK_BULK:
        rate = config.track_bulk_per_second
    elif endpoint is Endpoint.UPDATE_EMAIL:
        rate = config.update_email_per_second
    else:
        rate = config.bulk_update_per_second
    wait_for_slot = state.admit(key, endpoint, at, rate)
    if wait_for_slot is None:
        return None
    headers = (
        {"Retry-After": str(max(1, math.ceil(wait_for_slot)))} if config.send_retry_after else {}
    )
    message = f"Rate limit of {rate:g} requests/s exceeded"
    return rules.error(429, "RateLimitExceeded", message, headers=headers)


# Iterable's ChannelsResponse (api-docs.json): what GET /api/channels answers a good key.
_CHANNELS = {
    "channels": [
        {"id": 1, "name": "Marketing Email", "channelType": "Marketing", "messageMedium": "Email"},
        {
            "id": 2,
            "name": "Transactional Email",
            "channelType": "Transactional",
            "messageMedium": "Email",
        },
    ]
}


async def _channels(request: web.Request) -> web.Response:
    """GET /api/channels: read-only, checks the Api-Key as the bulk endpoints do."""
    config, state = request.app[CONFIG_KEY], request.app[STATE_KEY]
    key = request.headers.get("Api-Key", "")
    if time.monotonic() < config.down_until:
        reply = rules.error(503, "GenericError", "Service unavailable (simulated downtime)")
    elif not key or (config.api_keys is not None and key not in config.api_keys):
        reply = rules.error(401, "BadApiKey", "Invalid API key")
    else:
        reply = Reply(200, _CHANNELS)
    state.channel_probes[reply.status] += 1
    return web.Response(
        status=reply.status, body=_ENCODER.encode(reply.body), content_type="application/json"
    )


# --- admin routes -------------------------------------------------------------------------


async def _stats(request: web.Request) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(request.app[STATE_KEY].stats()), content_type="application/json"
    )


async def _requests(request: web.Request) -> web.Response:
    """GET /_sim/requests?endpoint=trackBulk&limit=N: the last N bodies and their answers."""
    try:
        limit = int(request.query.get("limit", "10"))
    except ValueError:
        return web.json_response({"error": "limit must be an integer"}, status=400)
    sent = request.app[STATE_KEY].recent.last(request.query.get("endpoint"), limit)
    return web.Response(
        body=_ENCODER.encode({"requests": [describe(one) for one in sent]}),
        content_type="application/json",
    )


async def _faults(request: web.Request) -> web.Response:
    status, answer = change_faults(request.app[CONFIG_KEY], await request.read())
    return web.json_response(answer, status=status)


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
    app.router.add_get("/api/channels", _channels)
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/requests", _requests)
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
            f"stats: /_sim/stats, last requests: /_sim/requests)",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
