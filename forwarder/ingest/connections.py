"""The HTTP server's guard against slow and idle clients: a header deadline and a cap."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from forwarder.config import ServerConfig
from forwarder.ingest.amplitude import ErrorBody

log = logging.getLogger("forwarder.server")

# Open files the daemon needs besides client connections: journal segments, SQLite,
# dead letters, and its own connections to Iterable.
FILES_BESIDES_CONNECTIONS = 512

_encoder = msgspec.json.Encoder()
_REFUSAL_BODY = _encoder.encode(ErrorBody(code=503, error="Too many connections: retry later"))
# Written straight to the socket: the connection is refused before any request is read.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


class ConnectionCounts:
    """What the guard did, for tests and logs."""

    def __init__(self) -> None:
        self.header_timeouts = 0
        self.evicted = 0
        self.refused = 0


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol, closed when a request's headers outrun the deadline.

    aiohttp has no header timeout: its keep-alive timer (3,630 s by default) is the only
    one, so a client trickling a header line holds a socket for an hour. The clock starts
    when the connection opens, or at the first byte of the next request on a kept-alive
    one, and stops once aiohttp has parsed the headers (a message is queued).
    """

    __slots__ = ("_guard", "_header_timer", "_idle")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_timer: asyncio.TimerHandle | None = None
        # Served a request and waits for the next one (aiohttp's idle timeout applies).
        self._idle = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._guard.admit(self):
            self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        if self._idle and self._header_timer is None:
            self._start_header_clock()
        super().data_received(data)
        # aiohttp queues a message once a request's headers are parsed (or found broken).
        if self._messages:
            self._stop_header_clock()
            self._idle = False
            self._guard.busy(self)

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        finished = await super().finish_response(request, resp, start_time)
        if not self._messages:  # no pipelined request waits: idle until the next one
            self._idle = True
            self._guard.waiting(self)
        return finished

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        self._guard.forget(self)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """An Amplitude-shaped error; aiohttp's own echoes the raw request bytes back."""
        super().handle_error(request, status, exc, message)  # logs; raises once output began
        if isinstance(exc, HttpProcessingError):
            error = f"Malformed HTTP request ({type(exc).__name__})"
        else:
            error = HTTPStatus(status).phrase
        response = web.Response(
            body=_encoder.encode(ErrorBody(code=status, error=error)),
            status=status,
            content_type="application/json",
        )
        response.force_close()
        return response

    def refuse(self) -> None:
        """Answer 503 before reading anything, and close."""
        if self.transport is not None:
            self.transport.write(REFUSAL)
        self.force_close()

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._header_timer = self._loop.call_later(
            self._guard.limits.header_timeout_seconds, self._headers_too_slow
        )

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is not None:
            self._guard.counts.header_timeouts += 1
            log.debug("closing a connection: request headers not complete in time")
            self.force_close()


class GuardedServer(web.Server):
    """aiohttp's server with GuardedRequestHandlers and a cap on open connections.

    Past the cap a new connection takes the place of the oldest one that waits for a
    request (one that never sent a whole request first, then idle kept-alive ones, as
    nginx reuses its idle connections); busy connections are never closed. Only when
    every connection is busy is the new one refused with a 503.
    """

    def __init__(self, handler: Any, *, limits: ServerConfig, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.counts = ConnectionCounts()
        self._open: set[GuardedRequestHandler] = set()
        # Oldest first; OrderedDict pops its first entry in O(1) where dict degrades.
        self._fresh: OrderedDict[GuardedRequestHandler, None] = OrderedDict()
        self._idle: OrderedDict[GuardedRequestHandler, None] = OrderedDict()

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: GuardedRequestHandler) -> bool:
        """Count a new connection in, making room past the cap; False if it was refused."""
        if len(self._open) >= self.limits.max_connections:
            victim = self._oldest_waiting()
            if victim is None:
                self.counts.refused += 1
                handler.refuse()
                return False
            self.counts.evicted += 1
            self.forget(victim)
            victim.force_close()
        self._open.add(handler)
        self._fresh[handler] = None
        return True

    def busy(self, handler: GuardedRequestHandler) -> None:
        self._fresh.pop(handler, None)
        self._idle.pop(handler, None)

    def waiting(self, handler: GuardedRequestHandler) -> None:
        if handler in self._open:
            self._idle[handler] = None
            self._idle.move_to_end(handler)

    def forget(self, handler: GuardedRequestHandler) -> None:
        self._open.discard(handler)
        self.busy(handler)

    def _oldest_waiting(self) -> GuardedRequestHandler | None:
        for waiting in (self._fresh, self._idle):
            if waiting:
                return waiting.popitem(last=False)[0]
        return None


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer, idle connections closed after idle_timeout."""

    def __init__(self, app: web.Application, limits: ServerConfig, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.idle_timeout_seconds, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        # The app's startup and the handler arguments as aiohttp builds them, in our class.
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            limits=self.limits,
            **plain._kwargs,
        )


def raise_file_limit(max_connections: int) -> int:
    """Lift the soft open-file limit so the cap, not EMFILE, bounds connections; the limit.

    A process past its limit cannot accept clients nor open a journal segment or the
    checkpoint; systemd's default soft limit is 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-file limit %d is below server.max_connections + %d: raise LimitNOFILE",
            soft,
            FILES_BESIDES_CONNECTIONS,
        )
    return soft
