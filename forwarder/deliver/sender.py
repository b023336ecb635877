"""One batch through HTTP and its retries: post, read the answer, settle what it decides."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field

import aiohttp

from forwarder.config import SyncConfig
from forwarder.deliver.lanes import Queued
from forwarder.deliver.notices import Notices, redact
from forwarder.deliver.outcome import Outcome, read_outcome
from forwarder.deliver.pause import Pause
from forwarder.deliver.rate import RateBudget, SendStamp, send_time_tracing
from forwarder.deliver.retry import RetryPolicy
from forwarder.deliver.settle import Settlement
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, assemble_body

log = logging.getLogger("forwarder.sender")

# A failed request or a strange answer is logged at most once per this many seconds per
# endpoint and cause (the count of those held back goes with the next line).
NOTICE_SECONDS = 30.0


@dataclass(slots=True)
class Attempt:
    """One request's answer as fates per item, and a short reason for logs."""

    outcome: Outcome
    reason: str


@dataclass(slots=True, eq=False)
class Chunk:
    """Part of a batch still to send: when it may go, how many halvings deep, its items."""

    ready_at: float
    depth: int
    items: list[Queued]


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
    _notices: Notices = field(init=False)
    # Requests in flight per session, and closes under way of sessions a reload replaced.
    _posting: dict[aiohttp.ClientSession, int] = field(default_factory=dict, init=False)
    _closing: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self, rng: random.Random | None) -> None:
        self.stats = self.settlement.stats
        self.policy = RetryPolicy.from_config(self.sync.delivery)
        self._rng = rng or random.Random()
        self._notices = Notices(NOTICE_SECONDS)

    async def start(self) -> None:
        self._session = self._open_session()

    def _open_session(self) -> aiohttp.ClientSession:
        delivery = self.sync.delivery
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=delivery.request_timeout_seconds),
            connector=aiohttp.TCPConnector(
                limit=2 * delivery.max_in_flight + 2, keepalive_timeout=delivery.keepalive_seconds
            ),
            trace_configs=[send_time_tracing()],
            headers={"Api-Key": self.sync.api_key, "Content-Type": "application/json"},
            raise_for_status=False,
        )

    def reconfigure(self, sync: SyncConfig) -> None:
        """A reload's settings: the next request goes to the new URL with the new key.

        A new key, timeout or connection setting takes a new session; the old one closes
        once the requests it carries are answered, so none of them is cut.
        """
        old = self.sync
        self.sync = sync
        self.policy = RetryPolicy.from_config(sync.delivery)
        if self._session is None or _session_settings(old) == _session_settings(sync):
            return
        retired, self._session = self._session, self._open_session()
        if not self._posting.get(retired):
            self._close_later(retired)

    def _close_later(self, session: aiohttp.ClientSession) -> None:
        self._posting.pop(session, None)
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        for session in list(self._posting):
            await session.close()
        self._posting.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def send(
        self, endpoint: Endpoint, batch: list[Queued], stamp: SendStamp, slot: asyncio.Semaphore
    ) -> list[Queued]:
        """Send until every item is delivered, dead or handed back; the handed-back items.

        Items come back when the sync pauses (a refused key or URL, or an outage): they
        must go out again, before anything later of their users, in their order. Only the
        batch a paused sync lets through as its probe is sent; the retries of others come
        back instead. `slot` (held by the caller) is let go while a retry waits, so other
        users' batches can use it.
        """
        back: list[Queued] = []
        work = [Chunk(0.0, 0, batch)]
        # Item-level failures (the answer's per-item "retry") of the items in this call.
        item_failures: dict[int, int] = {}
        budget = self.policy.bisect_budget(len(batch))
        first = True
        while work:
            if not first and self.pause.reason is not None:
                for rest in work:
                    back.extend(rest.items)
                break
            chunk = min(work, key=lambda c: c.ready_at)
            wait = chunk.ready_at - time.monotonic()
            if wait > 0:
                slot.release()
                try:
                    await asyncio.sleep(wait)
                finally:
                    await slot.acquire()
                continue
            work.remove(chunk)
            items = chunk.items
            if not first:
                stamp = await self.rate.acquire(self.sync.api_key, endpoint)
            first = False
            attempt = await self.post(endpoint, items, stamp)
            outcome = attempt.outcome
            if outcome.auth_failure is not None:
                self.pause.refused(outcome.auth_failure)
                back.extend(items)
                continue  # the rest of the work comes back at the top of the loop
            if outcome.transient:
                self.pause.failed(attempt.reason)
            else:
                self.pause.answered()
            budget = self._apply(endpoint, chunk, outcome, work, budget)
            later = self._not_found(endpoint, [items[i] for i in outcome.not_found], attempt)
            retry = self._count_failed_attempt(
                endpoint, [items[i] for i in outcome.retry], outcome, attempt.reason, item_failures
            )
            for again, delay in ((later, self._not_found_delay(later)), (retry, None)):
                if not again:
                    continue
                if self.pause.reason is not None:
                    back.extend(again)  # the probes take over from here
                    continue
                if delay is None:
                    delay = self.policy.next_delay(
                        max(q.attempts for q in again), outcome.retry_after, self._rng
                    )
                self._log_retry(endpoint, again, delay, attempt.reason)
                work.append(Chunk(time.monotonic() + delay, chunk.depth, again))
        if len(back) > 1:
            order = {id(queued): n for n, queued in enumerate(batch)}
            back.sort(key=lambda queued: order[id(queued)])
        return back

    def _apply(
        self, endpoint: Endpoint, chunk: Chunk, outcome: Outcome, work: list[Chunk], budget: int
    ) -> int:
        """Settle what the answer settles, queue resends and halves; the budget left."""
        items = chunk.items
        self.settlement.delivered(endpoint, [items[i] for i in outcome.delivered])
        self.settlement.dead([(items[i], failure) for i, failure in outcome.dead])
        if outcome.resend:
            work.append(Chunk(0.0, chunk.depth, [items[i] for i in outcome.resend]))
        if outcome.split:  # the outcome splits only batches of two or more
            if chunk.depth < self.policy.max_bisect_depth and budget >= 2:
                half = len(items) // 2
                work.append(Chunk(0.0, chunk.depth + 1, items[:half]))
                work.append(Chunk(0.0, chunk.depth + 1, items[half:]))
                return budget - 2
            # Past the bisect budget: Iterable refuses every part we try, so the cause is
            # not one item we can find; dead letters keep them for a replay.
            why = f"{outcome.summary} (not bisected further: {len(items)} items, depth "
            why += f"{chunk.depth}, bisect budget {'spent' if budget < 2 else 'left'})"
            failure = Failure(FailureKind.BAD_REQUEST, why)
            self.settlement.dead([(queued, failure) for queued in items])
        return budget

    def _not_found(self, endpoint: Endpoint, items: list[Queued], attempt: Attempt) -> list[Queued]:
        """Items whose user Iterable does not see: dead letters once they have been
        answered so for not_found_retry_seconds; the ones to try again."""
        if not items:
            return items
        now = time.monotonic()
        dead: list[tuple[Queued, Failure]] = []
        keep: list[Queued] = []
        for queued in items:
            queued.attempts += 1
            queued.not_found_tries += 1
            if queued.not_found_since is None:
                queued.not_found_since = now
            if self.policy.not_found_expired(queued.not_found_since, now):
                waited = now - queued.not_found_since
                detail = f"user not found for {waited:.0f} s ({attempt.reason})"
                dead.append((queued, Failure(FailureKind.USER_NOT_FOUND, detail)))
            else:
                keep.append(queued)
        self.stats.retries[endpoint.value] += len(keep)
        self.settlement.dead(dead)
        return keep

    def _not_found_delay(self, items: list[Queued]) -> float | None:
        if not items:
            return None
        return self.policy.not_found_delay(max(q.not_found_tries for q in items), self._rng)

    def _count_failed_attempt(
        self,
        endpoint: Endpoint,
        retry: list[Queued],
        outcome: Outcome,
        reason: str,
        item_failures: dict[int, int],
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
            failures = 0
            if not outcome.transient:
                failures = item_failures[id(queued)] = item_failures.get(id(queued), 0) + 1
            elapsed = now - queued.first_attempt_at
            if self.policy.gives_up(queued.attempts, elapsed, failures):
                detail = f"after {queued.attempts} attempts in {elapsed:.0f} s: {reason}"
                exhausted.append((queued, Failure(FailureKind.RETRIES_EXHAUSTED, detail)))
            else:
                keep.append(queued)
        self.stats.retries[endpoint.value] += len(keep)
        self.settlement.dead(exhausted)
        return keep

    async def post(self, endpoint: Endpoint, items: list[Queued], stamp: SendStamp) -> Attempt:
        """One HTTP request, its answer read into fates per item."""
        session = self._session
        assert session is not None, "start() first"
        self._posting[session] = self._posting.get(session, 0) + 1
        try:
            return await self._post(session, endpoint, items, stamp)
        finally:
            left = self._posting[session] - 1
            if left or session is self._session:
                self._posting[session] = left
            else:
                self._close_later(session)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        items: list[Queued],
        stamp: SendStamp,
    ) -> Attempt:
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
            # Never follow a redirect: aiohttp would resend the POST as a GET, and that
            # GET's 200 would count the items delivered. A 3xx pauses the sync instead.
            async with session.post(
                url, data=body, trace_request_ctx=stamp, allow_redirects=False
            ) as response:
                answer = await response.read()
                status = response.status
                headers = response.headers
            reason = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            status = None
            reason = f"{type(error).__name__}: {error}".strip(": ") or "connection error"
        stats.observe_latency(endpoint.value, time.monotonic() - started)
        if log.isEnabledFor(logging.DEBUG):
            ms = round((time.monotonic() - started) * 1000)
            answered = status if status is not None else redact(reason)
            log.debug(
                "POST %s: %d items, %d bytes, %s in %d ms",
                endpoint.value,
                len(items),
                len(body),
                answered,
                ms,
                extra={"sync": self.sync.name, "endpoint": endpoint.value, "status": answered},
            )
        stats.responses[(endpoint.value, str(status) if status is not None else "error")] += 1
        outcome = read_outcome(endpoint, status, headers, answer, [q.item for q in items])
        if status is not None:
            reason = outcome.summary or reason
        if status != 200 or outcome.dead or outcome.retry or outcome.foreign:
            stats.last_error_at = time.time()
            stats.last_error = f"{endpoint.value}: {reason}"
        self._log(endpoint, len(items), outcome, reason)
        return Attempt(outcome, reason)

    def _log_retry(self, endpoint: Endpoint, items: list[Queued], delay: float, why: str) -> None:
        """One line per endpoint per NOTICE_SECONDS for the retries it schedules: what
        failed, the attempt, the wait, and how many retry lines were held back."""
        held = self._notices.due((endpoint, "retry"), time.monotonic())
        if held is None:
            return
        attempt = max(queued.attempts for queued in items)
        log.warning(
            "retrying %s after %s: %d item(s), attempt %d, next try in %.2f s%s",
            endpoint.value,
            redact(why),
            len(items),
            attempt,
            delay,
            f" ({held} more retry line(s) held back)" if held else "",
            extra={
                "sync": self.sync.name,
                "endpoint": endpoint.value,
                "items": len(items),
                "attempt": attempt,
                "wait_seconds": round(delay, 3),
                "held_back": held,
            },
        )

    def _log(self, endpoint: Endpoint, count: int, outcome: Outcome, reason: str) -> None:
        """One line for a strange answer, rate-limited; failed requests are _log_retry's
        (or the pause's, or the dead letters') to tell."""
        if outcome.foreign:
            cause = "foreign"
            text = "Iterable's failure lists name values not in the request (%d items): %s"
        else:
            return
        held = self._notices.due((endpoint, cause), time.monotonic())
        if held is not None:
            log.warning(
                text + (f" ({held} more like it held back)" if held else ""),
                count,
                reason,
                extra={"sync": self.sync.name, "endpoint": endpoint.value},
            )


def _session_settings(sync: SyncConfig) -> tuple[object, ...]:
    """What a sender's HTTP session is built with."""
    delivery = sync.delivery
    return (
        sync.api_key,
        delivery.request_timeout_seconds,
        delivery.max_in_flight,
        delivery.keepalive_seconds,
    )
