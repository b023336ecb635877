"""Delivery for one sync: batchers per endpoint, rate limits, bounded concurrency, retries."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import aiohttp
import msgspec
from aiolimiter import AsyncLimiter

from forwarder.amplitude import mask
from forwarder.config import SyncConfig
from forwarder.deadletters import DeadLetterFile, make_letter, reason_kind
from forwarder.iterable import Endpoint, Item, assemble_body, body_envelope, identity_of
from forwarder.outcome import Outcome, read_outcome
from forwarder.pipeline import BatchCaps, Lanes, Queued
from forwarder.retry import RetryPolicy

log = logging.getLogger("forwarder.sender")
_encoder = msgspec.json.Encoder()
ENDPOINTS = (Endpoint.BULK_UPDATE, Endpoint.TRACK_BULK)

# Called once per item when it leaves the sync for good: delivered (True) or dead (False).
SettledCallback = Callable[[list[Queued], bool], None]


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
        self.limiter = AsyncLimiter(1, (1.0 + headroom) / rate)
        self._window: deque[list[float]] = deque(maxlen=max(1, int(rate)))

    async def acquire(self) -> list[float]:
        """Wait for a turn; the stamp to hand to the request (see `stamp_sent`)."""
        await self.limiter.acquire()
        window = self._window
        while len(window) == window.maxlen:
            wait = window[0][0] + 1.0 - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        stamp = [time.monotonic()]
        window.append(stamp)
        return stamp


async def stamp_sent(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    """aiohttp trace hook: the request's headers are out; move its window stamp there."""
    stamp = context.trace_request_ctx
    if isinstance(stamp, list):
        stamp[0] = time.monotonic()


class LimiterRegistry:
    """One RateGate per (Iterable API key, endpoint), shared by every sync using that key.

    Iterable's limits are per project (per key), so two syncs on one key share one
    budget; when they configure different rates, the lowest wins. Each gate stays
    `rate_headroom` under the configured rate, so network jitter between our send and
    Iterable's count cannot put two of our requests into one of its windows.
    """

    def __init__(self) -> None:
        self._gates: dict[tuple[str, Endpoint], RateGate] = {}

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        rates: dict[tuple[str, Endpoint], tuple[float, float]] = {}
        for sync in syncs:
            for endpoint in ENDPOINTS:
                key = (sync.api_key, endpoint)
                rate, headroom = rate_of(sync, endpoint), sync.delivery.rate_headroom
                known = rates.get(key)
                if known is not None:
                    rate, headroom = min(rate, known[0]), max(headroom, known[1])
                rates[key] = (rate, headroom)
        self._gates = {key: RateGate(rate, headroom) for key, (rate, headroom) in rates.items()}

    def get(self, api_key: str, endpoint: Endpoint) -> RateGate:
        return self._gates[(api_key, endpoint)]


def rate_of(sync: SyncConfig, endpoint: Endpoint) -> float:
    if endpoint is Endpoint.TRACK_BULK:
        return sync.limits.track_bulk_per_second
    return sync.limits.bulk_update_per_second


def caps_of(sync: SyncConfig, endpoint: Endpoint) -> BatchCaps:
    items = (
        sync.limits.max_events_per_request
        if endpoint is Endpoint.TRACK_BULK
        else sync.limits.max_users_per_request
    )
    return BatchCaps(max_items=items, max_bytes=sync.limits.max_request_bytes)


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class LatencyHistogram:
    """Upstream latency in fixed buckets (cumulative at export), cheap to update."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
                return
        self.counts[-1] += 1


@dataclass
class DeliveryStats:
    """Counters one sync keeps about its delivery; metrics and /status read them."""

    delivered: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    responses: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    items_sent: Counter[str] = field(default_factory=Counter)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    # (unix time, delivered count, dead count) per settle, for "the last five minutes".
    recent: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=100_000))

    def observe_latency(self, endpoint: str, seconds: float) -> None:
        histogram = self.latency.get(endpoint)
        if histogram is None:
            histogram = self.latency[endpoint] = LatencyHistogram()
        histogram.observe(seconds)

    def recent_counts(self, window: float = 300.0) -> tuple[int, int]:
        """Items delivered and dead-lettered in the last `window` seconds."""
        since = time.time() - window
        delivered = dead = 0
        for at, ok, bad in reversed(self.recent):
            if at < since:
                break
            delivered += ok
            dead += bad
        return delivered, dead


class SyncDelivery:
    """Everything between routed items and Iterable's answers for one sync."""

    def __init__(
        self,
        sync: SyncConfig,
        limiters: LimiterRegistry,
        dead_letters: DeadLetterFile,
        on_settled: SettledCallback | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.sync = sync
        self.name = sync.name
        self.lanes = Lanes()
        self.stats = DeliveryStats()
        self.policy = RetryPolicy.from_config(sync.delivery)
        self.dead_letters = dead_letters
        self._limiters = limiters
        self._on_settled = on_settled
        self._rng = rng or random.Random()
        self.caps = {e: caps_of(sync, e) for e in ENDPOINTS}
        self._max_item_bytes = {
            e: self.caps[e].max_bytes - sum(len(part) for part in body_envelope(e)) for e in ENDPOINTS
        }
        self._wake = {e: asyncio.Event() for e in ENDPOINTS}
        self._slots = {e: asyncio.Semaphore(sync.delivery.max_in_flight) for e in ENDPOINTS}
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batchers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._flushing = False
        self._linger = sync.delivery.linger_ms / 1000.0
        # Why the sync is not sending (a bad API key), and when to probe again.
        self.paused: str | None = None
        self._probe_at = 0.0
        self._probe_interval = sync.delivery.auth_retry_seconds
        self.in_flight = 0

    # --- intake --------------------------------------------------------------------

    def has_room(self) -> bool:
        delivery = self.sync.delivery
        return (
            self.lanes.items < delivery.max_queued_items
            and self.lanes.bytes < delivery.max_queued_bytes
        )

    def enqueue(
        self, endpoint: Endpoint, item: Item, encoded: bytes | None = None, ack: object = None
    ) -> None:
        """Queue one item behind its user's earlier items (never blocks).

        `encoded` is the item's JSON when the caller has it already (the journal does).
        """
        if encoded is None:
            encoded = _encoder.encode(item)
        queued = Queued(identity_of(item), endpoint, item, encoded, ack=ack)
        if len(encoded) > self._max_item_bytes[endpoint]:
            # It could never be sent: say so now rather than block its user's lane.
            self._dead([(queued, f"item larger than max_request_bytes: {len(encoded)} bytes")])
            return
        self.lanes.put(queued)
        self._idle.clear()
        self._wake[endpoint].set()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.sync.delivery.request_timeout_seconds)
        connector = aiohttp.TCPConnector(
            limit=2 * self.sync.delivery.max_in_flight + 2, keepalive_timeout=60
        )
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(stamp_sent)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            trace_configs=[tracing],
            headers={"Api-Key": self.sync.api_key, "Content-Type": "application/json"},
            raise_for_status=False,
        )
        self._batchers = [
            asyncio.create_task(self._batcher(e), name=f"batcher-{self.name}-{e.value}")
            for e in ENDPOINTS
        ]

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued without lingering; True when all of it settled in time."""
        self._flushing = True
        for wake in self._wake.values():
            wake.set()
        try:
            await asyncio.wait_for(self.wait_idle(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._flushing = False

    async def wait_idle(self) -> None:
        while self.lanes.items or self._tasks:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> list[Queued]:
        """Stop sending; return what was still queued or in flight (for the journal's next start)."""
        for task in self._batchers:
            task.cancel()
        in_flight = list(self._tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*self._batchers, *in_flight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.lanes.drain_all()

    # --- batching ------------------------------------------------------------------

    async def _batcher(self, endpoint: Endpoint) -> None:
        caps = self.caps[endpoint]
        wake = self._wake[endpoint]
        slots = self._slots[endpoint]
        limiter = self._limiters.get(self.sync.api_key, endpoint)
        lanes = self.lanes
        while True:
            oldest = lanes.oldest_ready(endpoint)
            if oldest is None:
                wake.clear()
                await wake.wait()
                continue
            now = time.monotonic()
            if self.paused is not None:
                if now < self._probe_at:
                    await self._sleep_or_wake(wake, self._probe_at - now)
                    continue
                # One probe batch per interval while paused, not max_in_flight of them.
                self._probe_at = now + self._probe_interval
            full = (
                lanes.queued_per_endpoint[endpoint] >= caps.max_items
                or lanes.bytes_per_endpoint[endpoint] >= caps.max_bytes
            )
            wait = oldest + self._linger - now
            if not full and not self._flushing and wait > 0:
                await self._sleep_or_wake(wake, wait)
                continue
            await slots.acquire()
            try:
                stamp = await limiter.acquire()
                batch = lanes.take_batch(endpoint, caps)
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            task = asyncio.create_task(self._deliver(endpoint, batch, stamp))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _sleep_or_wake(self, wake: asyncio.Event, seconds: float) -> None:
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except TimeoutError:
            pass

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception(), extra={"sync": self.name})
        if not self._tasks and not self.lanes.items:
            self._idle.set()

    # --- one batch, through every retry --------------------------------------------

    async def _deliver(self, endpoint: Endpoint, batch: list[Queued], stamp: list[float]) -> None:
        """Send a batch until every item is delivered, dead or handed back; holds its users."""
        users = {q.user for q in batch}
        back: list[Queued] = []
        slots = self._slots[endpoint]
        limiter = self._limiters.get(self.sync.api_key, endpoint)
        work: deque[list[Queued]] = deque([batch])
        first = True
        self.in_flight += 1
        try:
            while work:
                items = work.popleft()
                if not first:
                    stamp = await limiter.acquire()
                first = False
                outcome, reason = await self._post(endpoint, items, stamp)
                if outcome.auth_failure is not None:
                    self._pause(outcome.auth_failure)
                    back.extend(items)
                    for rest in work:
                        back.extend(rest)
                    break
                if self.paused is not None:
                    self._resume()
                self._settle_outcome(endpoint, items, outcome, reason, work)
                retry = [items[i] for i in outcome.retry]
                if retry:
                    delay = self._schedule_retry(endpoint, retry, reason, outcome.retry_after)
                    if retry:
                        # Free the slot while waiting so other users' batches can go.
                        slots.release()
                        try:
                            await asyncio.sleep(delay)
                        finally:
                            await slots.acquire()
                        work.append(retry)
        finally:
            self.in_flight -= 1
            slots.release()
            self.lanes.settle(users, back)
            for e in ENDPOINTS:
                self._wake[e].set()

    def _settle_outcome(
        self,
        endpoint: Endpoint,
        items: list[Queued],
        outcome: Outcome,
        reason: str,
        work: deque[list[Queued]],
    ) -> None:
        delivered = [items[i] for i in outcome.delivered]
        if delivered:
            self.stats.delivered[endpoint.value] += len(delivered)
            self.stats.last_success_at = time.time()
            self._settled(delivered, True)
        if outcome.dead:
            self._dead([(items[i], why) for i, why in outcome.dead])
        if outcome.resend:
            work.append([items[i] for i in outcome.resend])
        if outcome.split:
            if len(items) == 1:
                self._dead([(items[0], reason or "rejected by Iterable")])
            else:
                half = len(items) // 2
                work.append(items[:half])
                work.append(items[half:])

    def _schedule_retry(
        self, endpoint: Endpoint, retry: list[Queued], reason: str, retry_after: float | None
    ) -> float:
        """Count the failed attempt; dead-letter what is out of tries; return the wait."""
        now = time.monotonic()
        exhausted: list[tuple[Queued, str]] = []
        keep: list[Queued] = []
        for queued in retry:
            queued.attempts += 1
            queued.last_error = reason
            if queued.first_attempt_at is None:
                queued.first_attempt_at = now
            if self.policy.gives_up(queued.attempts, now - queued.first_attempt_at):
                exhausted.append(
                    (queued, f"retries exhausted after {queued.attempts} attempts: {reason}")
                )
            else:
                keep.append(queued)
        self.stats.retries[endpoint.value] += len(keep)
        if exhausted:
            self._dead(exhausted)
        retry[:] = keep
        attempt = max((q.attempts for q in keep), default=1)
        return self.policy.next_delay(attempt, retry_after, self._rng)

    async def _post(
        self, endpoint: Endpoint, items: list[Queued], stamp: list[float]
    ) -> tuple[Outcome, str]:
        """One HTTP request; the answer read into an outcome, and a short reason for logs."""
        assert self._session is not None, "start() first"
        body = assemble_body(endpoint, [q.encoded for q in items])
        url = self.sync.endpoint_base + endpoint.value
        now = time.monotonic()
        for queued in items:
            if queued.first_attempt_at is None:
                queued.first_attempt_at = now
        status: int | None
        headers: Mapping[str, str] = {}
        answer = b""
        self.stats.requests[endpoint.value] += 1
        self.stats.items_sent[endpoint.value] += len(items)
        started = time.monotonic()
        try:
            async with self._session.post(url, data=body, trace_request_ctx=stamp) as response:
                answer = await response.read()
                status = response.status
                headers = response.headers
            reason = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            status = None
            reason = f"{type(error).__name__}: {error}".strip(": ") or "connection error"
        self.stats.observe_latency(endpoint.value, time.monotonic() - started)
        self.stats.responses[(endpoint.value, str(status) if status is not None else "error")] += 1
        outcome = read_outcome(endpoint, status, headers, answer, [q.item for q in items])
        if status is not None:
            reason = outcome.summary or reason
        if status != 200 or outcome.dead or outcome.retry:
            self.stats.last_error_at = time.time()
            self.stats.last_error = f"{endpoint.value}: {reason}"
        return outcome, reason

    # --- settling ------------------------------------------------------------------

    def _dead(self, letters: list[tuple[Queued, str]]) -> None:
        records = [
            make_letter(self.name, q.endpoint, q.item, why, max(q.attempts, 1)) for q, why in letters
        ]
        try:
            self.dead_letters.write(records)
        except OSError:
            log.exception("cannot write dead letters", extra={"sync": self.name})
        for _, why in letters:
            self.stats.dead[reason_kind(why)] += 1
        self._settled([q for q, _ in letters], False)

    def _settled(self, items: list[Queued], delivered: bool) -> None:
        count = len(items)
        self.stats.recent.append((time.time(), count if delivered else 0, 0 if delivered else count))
        if self._on_settled is not None:
            self._on_settled(items, delivered)

    def _pause(self, why: str) -> None:
        if self.paused is None:
            log.error(
                "Iterable refused the requests of API key %s: sync paused, items stay queued (%s)",
                mask(self.sync.api_key),
                why,
                extra={"sync": self.name},
            )
        else:
            self._probe_interval = min(self._probe_interval * 2, 3600.0)
        self.paused = f"Iterable refused the API key or URL: {why}"
        self._probe_at = time.monotonic() + self._probe_interval

    def _resume(self) -> None:
        log.warning("Iterable accepts the API key again: sync resumed", extra={"sync": self.name})
        self.paused = None
        self._probe_interval = self.sync.delivery.auth_retry_seconds
