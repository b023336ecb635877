"""One batch through HTTP and its retries: post, read the answer, settle what it decides."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field

import aiohttp

from forwarder.config import SyncConfig
from forwarder.deliver.lanes import Queued
from forwarder.deliver.outcome import Outcome, read_outcome
from forwarder.deliver.pause import Pause
from forwarder.deliver.rate import RateBudget, SendStamp, send_time_tracing
from forwarder.deliver.retry import RetryPolicy
from forwarder.deliver.settle import Settlement
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, assemble_body


@dataclass(slots=True)
class Attempt:
    """One request's answer as fates per item, and a short reason for logs."""

    outcome: Outcome
    reason: str


@dataclass(eq=False)
class Sender:
    """Sends batches of one sync: one keep-alive session, the rate budget, the retry policy."""

    sync: SyncConfig
    rate: RateBudget
    settlement: Settlement
    pause: Pause
    # The retry jitter's source; a private one unless a caller wants it seeded.
    rng: InitVar[random.Random | None] = None
    stats: DeliveryStats = field(init=False)
    policy: RetryPolicy = field(init=False)
    _rng: random.Random = field(init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    def __post_init__(self, rng: random.Random | None) -> None:
        self.stats = self.settlement.stats
        self.policy = RetryPolicy.from_config(self.sync.delivery)
        self._rng = rng or random.Random()

    async def start(self) -> None:
        delivery = self.sync.delivery
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=delivery.request_timeout_seconds),
            connector=aiohttp.TCPConnector(
                limit=2 * delivery.max_in_flight + 2, keepalive_timeout=delivery.keepalive_seconds
            ),
            trace_configs=[send_time_tracing()],
            headers={"Api-Key": self.sync.api_key, "Content-Type": "application/json"},
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, endpoint: Endpoint, batch: list[Queued], stamp: SendStamp, slot: asyncio.Semaphore
    ) -> list[Queued]:
        """Send until every item is delivered, dead or handed back; the handed-back items.

        Items come back when the sync pauses (a refused key or URL): they must go out
        again, before anything later of their users. `slot` (held by the caller) is let
        go while a retry waits, so other users' batches can use it.
        """
        back: list[Queued] = []
        work: deque[list[Queued]] = deque([batch])
        first = True
        while work:
            items = work.popleft()
            if not first:
                stamp = await self.rate.acquire(self.sync.api_key, endpoint)
            first = False
            attempt = await self.post(endpoint, items, stamp)
            outcome = attempt.outcome
            if outcome.auth_failure is not None:
                self.pause.pause(outcome.auth_failure)
                back.extend(items)
                for rest in work:
                    back.extend(rest)
                break
            self.pause.resume()
            self._apply(endpoint, items, outcome, work)
            retry = self._count_failed_attempt(
                endpoint, [items[i] for i in outcome.retry], attempt.reason
            )
            if retry:
                delay = self.policy.next_delay(
                    max(q.attempts for q in retry), outcome.retry_after, self._rng
                )
                slot.release()
                try:
                    await asyncio.sleep(delay)
                finally:
                    await slot.acquire()
                work.append(retry)
        return back

    def _apply(
        self, endpoint: Endpoint, items: list[Queued], outcome: Outcome, work: deque[list[Queued]]
    ) -> None:
        self.settlement.delivered(endpoint, [items[i] for i in outcome.delivered])
        self.settlement.dead([(items[i], failure) for i, failure in outcome.dead])
        if outcome.resend:
            work.append([items[i] for i in outcome.resend])
        if outcome.split:  # the outcome splits only batches of two or more
            half = len(items) // 2
            work.append(items[:half])
            work.append(items[half:])

    def _count_failed_attempt(
        self, endpoint: Endpoint, retry: list[Queued], reason: str
    ) -> list[Queued]:
        """Count the failed attempt; dead-letter what is out of tries; what goes again."""
        if not retry:
            return retry
        now = time.monotonic()
        exhausted: list[tuple[Queued, Failure]] = []
        keep: list[Queued] = []
        for queued in retry:
            queued.attempts += 1
            if queued.first_attempt_at is None:
                queued.first_attempt_at = now
            if self.policy.gives_up(queued.attempts, now - queued.first_attempt_at):
                detail = f"after {queued.attempts} attempts: {reason}"
                exhausted.append((queued, Failure(FailureKind.RETRIES_EXHAUSTED, detail)))
            else:
                keep.append(queued)
        self.stats.retries[endpoint.value] += len(keep)
        self.settlement.dead(exhausted)
        return keep

    async def post(self, endpoint: Endpoint, items: list[Queued], stamp: SendStamp) -> Attempt:
        """One HTTP request, its answer read into fates per item."""
        assert self._session is not None, "start() first"
        stats = self.stats
        body = assemble_body(endpoint, [q.encoded for q in items])
        url = self.sync.endpoint_base + endpoint.value
        started = time.monotonic()
        for queued in items:
            if queued.first_attempt_at is None:
                queued.first_attempt_at = started
        status: int | None
        headers: Mapping[str, str] = {}
        answer = b""
        stats.requests[endpoint.value] += 1
        stats.items_sent[endpoint.value] += len(items)
        try:
            async with self._session.post(url, data=body, trace_request_ctx=stamp) as response:
                answer = await response.read()
                status = response.status
                headers = response.headers
            reason = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            status = None
            reason = f"{type(error).__name__}: {error}".strip(": ") or "connection error"
        stats.observe_latency(endpoint.value, time.monotonic() - started)
        stats.responses[(endpoint.value, str(status) if status is not None else "error")] += 1
        outcome = read_outcome(endpoint, status, headers, answer, [q.item for q in items])
        if status is not None:
            reason = outcome.summary or reason
        if status != 200 or outcome.dead or outcome.retry:
            stats.last_error_at = time.time()
            stats.last_error = f"{endpoint.value}: {reason}"
        return Attempt(outcome, reason)
