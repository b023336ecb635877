"""CORS for the ingest routes, so web pages on other origins can send as to Amplitude."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

ANY_ORIGIN = "*"
# The routes the Amplitude SDKs post to; health, readiness and metrics stay same-origin.
INGEST_PATHS = frozenset({"/2/httpapi", "/batch", "/identify"})
ALLOWED_METHODS = "POST, GET, OPTIONS"
_ALLOWED_METHOD_NAMES = frozenset({"POST", "GET", "OPTIONS"})
# What the Browser SDK's fetch and XHR transports set (Content-Encoding when it gzips);
# answered when a preflight names no headers.
DEFAULT_ALLOWED_HEADERS = "Content-Type, Accept, Content-Encoding"
# Chromium caps a cached preflight at 2 hours; longer would only be ignored.
MAX_AGE_SECONDS = 7200

# A comma-separated list of header names (RFC 9110 tokens): only such a list is echoed.
_HEADER_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
# A serialized origin as browsers send it: scheme, host and a port, no path.
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may call: any (Amplitude's own answer), or exactly those listed."""

    any_origin: bool
    origins: frozenset[str]

    @classmethod
    def from_config(cls, allowed_origins: Iterable[str]) -> CorsPolicy:
        listed = [origin.lower() for origin in allowed_origins]
        return cls(any_origin=ANY_ORIGIN in listed, origins=frozenset(listed) - {ANY_ORIGIN})

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if self.any_origin:
            return ANY_ORIGIN
        if origin is not None and origin.lower() in self.origins:
            return origin
        return None


def origin_problem(origin: str) -> str | None:
    """Why `origin` is not an entry allowed_origins can hold, or None when it is."""
    if origin == ANY_ORIGIN:
        return None
    if origin != origin.lower():
        return f"write {origin!r} in lower case, as browsers send it"
    if not _ORIGIN.fullmatch(origin):
        return f"expected '*' or SCHEME://HOST[:PORT] with no path, got {origin!r}"
    scheme = origin.split(":", 1)[0]
    if origin.endswith(_DEFAULT_PORTS[scheme]):
        return f"drop the default port from {origin!r}: browsers never send it"
    return None


def answer_headers(policy: CorsPolicy, origin: str | None) -> dict[str, str]:
    """The CORS headers every answer on an ingest route carries, errors included."""
    headers: dict[str, str] = {}
    allowed = policy.allow_origin(origin)
    if allowed is not None:
        headers["Access-Control-Allow-Origin"] = allowed
    if not policy.any_origin:
        # The answer depends on Origin: a shared cache must not hand it to another one.
        headers["Vary"] = "Origin"
    return headers


def preflight_headers(
    policy: CorsPolicy, request_headers: Mapping[str, str]
) -> dict[str, str] | None:
    """The headers that allow a preflight, or None when it is refused (origin or method)."""
    origin = request_headers.get("Origin")
    method = request_headers.get("Access-Control-Request-Method", "").upper()
    if policy.allow_origin(origin) is None or method not in _ALLOWED_METHOD_NAMES:
        return None
    headers = answer_headers(policy, origin)
    requested = request_headers.get("Access-Control-Request-Headers", "").strip()
    # The API key travels in the body and no cookie is read, so any header the page
    # wants to send is harmless: echo it rather than fail on an SDK's custom header.
    if requested and _HEADER_LIST.fullmatch(requested):
        headers["Access-Control-Allow-Headers"] = requested
        headers["Vary"] = ", ".join(
            filter(None, [headers.get("Vary"), "Access-Control-Request-Headers"])
        )
    else:
        headers["Access-Control-Allow-Headers"] = DEFAULT_ALLOWED_HEADERS
    headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    return headers


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def cors_middleware(policy: CorsPolicy) -> Middleware:
    """Answer preflights and add CORS headers to every ingest answer.

    It sits outside the error middleware, so 4xx, 429 and 503 answers carry the headers
    too: without them the browser hides the status and the SDK cannot tell a 429 (wait)
    from a 400 (drop).
    """

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in INGEST_PATHS:
            return await handler(request)
        if is_preflight(request):
            allowed = preflight_headers(policy, request.headers)
            if allowed is None:
                return web.json_response(
                    {"code": 403, "error": "CORS preflight refused: origin or method not allowed"},
                    status=403,
                    headers=answer_headers(policy, None),
                )
            return web.Response(status=204, headers=allowed)
        headers = answer_headers(policy, request.headers.get("Origin"))
        try:
            response = await handler(request)
        except web.HTTPException as error:  # redirects the error middleware lets through
            error.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    return cors
