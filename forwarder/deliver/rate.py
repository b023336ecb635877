"""The rate budget role: a request slot per (Iterable API key, endpoint), shared by syncs.

The embedded implementation is an aiolimiter per key and endpoint, plus a sliding
one-second window; a cluster wires a budget shared by every node behind the same method.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aiohttp
from aiolimiter import AsyncLimiter

from forwarder.config import SyncConfig
from forwarder.iterable import ENDPOINTS, Endpoint, rate_of

# A one-element list the HTTP client moves to the moment the request's headers left.
SendStamp = list[float]


class RateBudget(Protocol):
    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        """Wait for a turn to send one request; the stamp to hand to the request."""

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        """Take these syncs' limits (a config reload); budgets in use carry on."""


class RateGate:
    """The send budget of one (Iterable API key, endpoint).

    An aiolimiter paces requests one every 1/rate seconds (no bursts). On top, a
    sliding window of the last sends makes sure no one-second window ever holds more
    than `rate` of them even when the event loop runs late and two paced sends bunch up.
    Each window entry is a stamp the HTTP client moves to the moment the request's
    headers actually left, so a send delayed by a busy loop counts from when it left.
    """

    def __init__(self, rate: float, headroom: float = 0.0) -> None:
        self.rate = rate
        self.headroom = headroom
        self.limiter = AsyncLimiter(1, (1.0 + headroom) / rate)
        self._window: deque[SendStamp] = deque(maxlen=max(1, int(rate)))

    def retune(self, rate: float, headroom: float) -> None:
        """A new rate from now on. The window keeps the latest sends, so the first second
        after the change holds no more than the new rate either."""
        self.rate, self.headroom = rate, headroom
        self.limiter = AsyncLimiter(1, (1.0 + headroom) / rate)
        self._window = deque(self._window, maxlen=max(1, int(rate)))

    async def acquire(self) -> SendStamp:
        await self.limiter.acquire()
        # Looked up each turn: a retune replaces the window.
        while len(self._window) == self._window.maxlen:
            wait = self._window[0][0] + 1.0 - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        stamp = [time.monotonic()]
        self._window.append(stamp)
        return stamp


class RateGates:
    """One RateGate per (Iterable API key, endpoint), shared by every sync using that key.

    Iterable's limits are per project (per key), so two syncs on one key share one
    budget; when they configure different rates, the lowest wins. Each gate stays
    `rate_headroom` under the configured rate, so network jitter between our send and
    Iterable's count cannot put two of our requests into one of its windows.
    """

    def __init__(self, syncs: Iterable[SyncConfig]) -> None:
        self._gates = {key: RateGate(*tuning) for key, tuning in shared_rates(syncs).items()}

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        """The limits of a reloaded config (the syncs still sending, draining ones too): a
        gate whose key stays keeps its pacing and window, retuned if its rate changed."""
        for key, (rate, headroom) in shared_rates(syncs).items():
            gate = self._gates.get(key)
            if gate is None:
                self._gates[key] = RateGate(rate, headroom)
            elif (gate.rate, gate.headroom) != (rate, headroom):
                gate.retune(rate, headroom)

    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        return await self._gates[(api_key, endpoint)].acquire()


def shared_rates(syncs: Iterable[SyncConfig]) -> dict[tuple[str, Endpoint], tuple[float, float]]:
    """(rate, headroom) per (key, endpoint): the lowest rate and the widest headroom."""
    rates: dict[tuple[str, Endpoint], tuple[float, float]] = {}
    for sync in syncs:
        for endpoint in ENDPOINTS:
            key = (sync.api_key, endpoint)
            rate, headroom = rate_of(sync.limits, endpoint), sync.delivery.rate_headroom
            known = rates.get(key)
            if known is not None:
                rate, headroom = min(rate, known[0]), max(headroom, known[1])
            rates[key] = (rate, headroom)
    return rates


class ReportedStamp(list[float]):
    """A SendStamp whose budget hears when the request really left (a budget shared by
    several processes can't watch the stamps it handed out)."""

    def __init__(self, at: float, on_sent: Callable[[float], None]) -> None:
        super().__init__([at])
        self.on_sent = on_sent


async def _stamp_sent(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    stamp = context.trace_request_ctx
    if isinstance(stamp, list):
        stamp[0] = time.monotonic()
        if isinstance(stamp, ReportedStamp):
            stamp.on_sent(stamp[0])


def send_time_tracing() -> aiohttp.TraceConfig:
    """aiohttp tracing that moves a request's SendStamp to when its headers went out."""
    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(_stamp_sent)
    return tracing
