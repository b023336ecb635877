"""The aiohttp app: Amplitude's ingest routes, health and readiness; no business rules."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from forwarder.config import ServerConfig
from forwarder.deliver.stats import LatencyHistogram
from forwarder.errors import FailureKind, IngestThrottled, StorageUnavailable
from forwarder.ingest import amplitude
from forwarder.ingest.amplitude import ErrorBody, Event, RejectedRequest
from forwarder.ingest.cors import CorsPolicy, cors_middleware
from forwarder.ingest.forms import parse_form, parse_multipart

log = logging.getLogger("forwarder.server")

_encoder = msgspec.json.Encoder()
JSON_TYPES = frozenset({"application/json", "text/json"})
# navigator.sendBeacon (the Browser SDK's 'beacon' transport) posts a JSON string as
# text/plain: a type that needs no CORS preflight, which a page being closed can't wait for.
UPLOAD_TYPES = JSON_TYPES | {"text/plain"}
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class EventSink(Protocol):
    """What the ingest routes hand accepted events to (the daemon's pipeline)."""

    def refusal(self, count: int) -> str | None:
        """None when `count` more events fit; else why not (answered as a 429)."""

    async def accept(self, events: list[Event]) -> None:
        """Take validated events; returns once they are as durable as the config asks.

        Raises StorageUnavailable when storage can't take them (answered as a 503), and
        IngestThrottled when it can't take them now (a 429, as `refusal`).
        """


def _writable() -> str | None:
    return None


class IngestState:
    """What the routes share: the limits, the accepted keys, readiness and the sink."""

    def __init__(
        self,
        server: ServerConfig,
        sink: EventSink,
        storage_fault: Callable[[], str | None] = _writable,
    ) -> None:
        self.api_keys = frozenset(server.api_keys)
        self.max_body_bytes = server.max_body_bytes
        self.max_events = server.max_events_per_request
        self.sink = sink
        self.requests: Counter[tuple[str, int]] = Counter()
        # Seconds from the request's headers to its answer, by route: the journal's group
        # commit (the fsync a 200 waits for) shows here first.
        self.latency: dict[str, LatencyHistogram] = {}
        self.events_accepted = 0
        self.events_throttled = 0
        self.rejected: Counter[str] = Counter()
        # Off while the journal is recovered and while draining on SIGTERM.
        self.ready = False
        self.accepting = True
        # Why storage takes no writes now (readiness off meanwhile), or None.
        self.storage_fault = storage_fault


STATE_KEY = web.AppKey("ingest_state", IngestState)


def json_response(body: msgspec.Struct, status: int) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def error_response(status: int, error: str) -> web.Response:
    return json_response(ErrorBody(code=status, error=error), status)


async def _read_body(request: web.Request, state: IngestState) -> bytes:
    """The request body (decompressed by aiohttp), refused with 413 past max_body_bytes."""
    declared = request.content_length
    if (
        declared is not None
        and declared > state.max_body_bytes
        and not request.headers.get("Content-Encoding")
    ):
        raise amplitude.payload_too_large(
            f"Payload too large: {declared} bytes > {state.max_body_bytes}"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > state.max_body_bytes:
                raise amplitude.payload_too_large(
                    f"Payload too large: more than {state.max_body_bytes} bytes"
                )
            chunks.append(chunk)
    except (RejectedRequest, web.HTTPException, ConnectionError):
        raise
    except Exception as error:  # a corrupt gzip stream surfaces here
        raise amplitude.bad_request(
            FailureKind.MALFORMED, f"Cannot read request body: {error}"
        ) from None
    return b"".join(chunks)


async def _admit_and_accept(state: IngestState, events: list[Event]) -> web.Response | None:
    """Hand events to the sink, or a 429 when it has no room (nothing is dropped)."""
    reason = "Server is shutting down" if not state.accepting else state.sink.refusal(len(events))
    if reason is not None:
        return _throttled(state, len(events), reason)
    try:
        await state.sink.accept(events)
    except IngestThrottled as error:
        return _throttled(state, len(events), str(error))
    except RejectedRequest as rejected:
        # What only the sink can tell (cluster mode: an event larger than a message may be).
        return _rejected(state, rejected)
    except StorageUnavailable as error:
        # Retryable, and nothing of the request was kept: never a 500 for a full disk.
        state.rejected[FailureKind.STORAGE_UNAVAILABLE.value] += 1
        return error_response(503, f"Storage unavailable, retry later: {error}")
    state.events_accepted += len(events)
    return None


def _throttled(state: IngestState, count: int, reason: str) -> web.Response:
    state.events_throttled += count
    state.rejected[FailureKind.THROTTLED.value] += 1
    return json_response(amplitude.throttled(count, reason), 429)


def _rejected(state: IngestState, rejected: RejectedRequest) -> web.Response:
    state.rejected[rejected.kind.value] += 1
    return json_response(rejected.body, rejected.status)


# What differs between the ingest routes: how a read body becomes validated events
# (raising RejectedRequest), and what the client is told once the sink took them.
Decode = Callable[[web.Request, IngestState, bytes], list[Event]]
Answer = Callable[[list[Event], bytes], web.Response]


async def _ingest(
    request: web.Request,
    content_types: frozenset[str],
    expected: str,
    decode: Decode,
    answer: Answer,
) -> web.Response:
    """What every ingest route does: check the content type, read, decode, admit, answer."""
    state = request.app[STATE_KEY]
    try:
        if request.content_type not in content_types:
            raise amplitude.bad_request(
                FailureKind.CONTENT_TYPE,
                f"Invalid Content-Type {request.content_type!r}: expected {expected}",
            )
        body = await _read_body(request, state)
        events = decode(request, state, body)
    except RejectedRequest as rejected:
        return _rejected(state, rejected)
    refused = await _admit_and_accept(state, events)
    if refused is not None:
        return refused
    return answer(events, body)


async def upload(request: web.Request) -> web.Response:
    """POST /2/httpapi and POST /batch."""
    return await _ingest(request, UPLOAD_TYPES, "application/json", _decode_upload, _uploaded)


def _decode_upload(request: web.Request, state: IngestState, body: bytes) -> list[Event]:
    return amplitude.decode_upload(body, state.api_keys, state.max_events)


def _uploaded(events: list[Event], body: bytes) -> web.Response:
    return json_response(amplitude.success(len(events), len(body)), 200)


async def identify(request: web.Request) -> web.Response:
    """POST /identify (a url-encoded or multipart form) and GET /identify (the same fields
    in the query string), as Amplitude's Identify API takes them: api_key and
    identification (an object or an array)."""
    if request.method == "GET":
        # A GET has no body, so whatever type it names is no reason to refuse it.
        any_type = frozenset({request.content_type})
        return await _ingest(request, any_type, "", _decode_identify_query, _identified)
    return await _ingest(
        request,
        FORM_TYPES,
        "application/x-www-form-urlencoded or multipart/form-data",
        _decode_identify,
        _identified,
    )


def _decode_identify(request: web.Request, state: IngestState, body: bytes) -> list[Event]:
    return _decode_identify_form(_parse_form(request, body), state)


def _decode_identify_query(request: web.Request, state: IngestState, body: bytes) -> list[Event]:
    return _decode_identify_form(parse_form(request.rel_url.raw_query_string.encode()), state)


def _decode_identify_form(form: dict[str, str], state: IngestState) -> list[Event]:
    return amplitude.decode_identify(
        form.get("api_key"), form.get("identification"), state.api_keys, state.max_events
    )


def _identified(events: list[Event], body: bytes) -> web.Response:
    return web.Response(text="success", status=200)


def _parse_form(request: web.Request, body: bytes) -> dict[str, str]:
    """Decode a url-encoded or multipart form strictly: bad bytes are a 400, not a crash."""
    if request.content_type == "multipart/form-data":
        return parse_multipart(body, request.headers.get("Content-Type", ""))
    return parse_form(body)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.ready and state.accepting and state.storage_fault() is None:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


@web.middleware
async def amplitude_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON with `code`, since the SDKs read the status from the body."""
    response: web.StreamResponse
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        response = error_response(error.status, error.reason)
        response.headers.update(headers)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        response = error_response(500, "Internal server error")
    route = request.match_info.route.resource
    label = route.canonical if route is not None else "unmatched"
    state = request.app[STATE_KEY]
    state.requests[(label, response.status)] += 1
    histogram = state.latency.get(label)
    if histogram is None:
        histogram = state.latency[label] = LatencyHistogram()
    histogram.observe(time.monotonic() - started)
    return response


def build_app(
    server: ServerConfig, sink: EventSink, storage_fault: Callable[[], str | None] = _writable
) -> web.Application:
    # aiohttp's own cap is a backstop: _read_body enforces the configured one with a 413.
    cors = cors_middleware(CorsPolicy.from_config(server.allowed_origins))
    app = web.Application(
        middlewares=[cors, amplitude_errors], client_max_size=server.max_body_bytes + 1
    )
    app[STATE_KEY] = IngestState(server, sink, storage_fault)
    app.router.add_post("/2/httpapi", upload)
    app.router.add_post("/batch", upload)
    app.router.add_post("/identify", identify)
    app.router.add_get("/identify", identify, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
