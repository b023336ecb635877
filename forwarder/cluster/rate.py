"""The rate budget every node shares: one per (Iterable API key, endpoint), kept in Redis.

It keeps the embedded RateGates' promise across processes: requests are paced one every
(1 + rate_headroom) / rate seconds, and no one-second window ever holds more than `rate`
of them. A Lua script reserves the next free slot atomically, on Redis' clock (the one
clock every node sees), and answers how far ahead it lies; the node sleeps that long and
sends, so nothing polls and one round trip buys one slot. Slots go out in the order they
are asked for, so nodes take turns. A request that leaves late (a busy node's loop) is
reported, and the window counts it from when it really left, as RateGate's stamps do.
Iterable's keys never reach Redis: a budget is named by a digest of its key.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import math
import os
import time
from collections.abc import Iterable

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.errors import RateBudgetUnavailable
from forwarder.config import SyncConfig
from forwarder.deliver.rate import ReportedStamp, SendStamp, shared_rates
from forwarder.iterable import Endpoint

# Everything the budget keeps in Redis is named under this prefix.
DEFAULT_PREFIX = "forwarder:rate"
MICROS = 1_000_000
# Iterable counts its limits per second.
WINDOW_SECONDS = 1.0
# No reservation lies this far ahead unless Redis' clock stepped back (one node waits for
# at most one slot of each budget at a time, so the queue ahead is one slot per node).
HORIZON_SECONDS = 60.0

# KEYS[1]: the next free slot (the pacing's theoretical arrival time), in microseconds on
# Redis' clock. KEYS[2]: the latest slots (a sorted set: member = the reservation's id,
# score = when it was sent, which is its slot until a late send is reported), at most
# ARGV[2]. ARGV: interval, limit, window, horizon (microseconds but the limit), the new
# reservation's id. Reserves a slot; returns the microseconds from now until it (0: now).
RESERVE_SLOT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
if redis.call('ZCARD', KEYS[2]) >= limit then
  local nth = redis.call('ZREVRANGE', KEYS[2], limit - 1, limit - 1, 'WITHSCORES')
  slot = math.max(slot, tonumber(nth[2]) + window)
end
if slot - now > horizon then
  -- Further ahead than any queue reaches: Redis' clock stepped back. Start afresh rather
  -- than stall every node until the clock catches up.
  redis.call('DEL', KEYS[1], KEYS[2])
  slot = now
end
local keep = math.ceil((slot - now + math.max(window, interval) + 1000000) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', slot + interval), 'PX', keep)
redis.call('ZADD', KEYS[2], string.format('%.0f', slot), ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(limit + 1))
redis.call('PEXPIRE', KEYS[2], keep)
return math.ceil(slot - now)
"""

# KEYS[1]: the latest slots. ARGV: a reservation's id, how late (microseconds) its request
# actually left. Moves that slot to when it was really sent, if it is still counted, so
# the slots reserved after this carry the window from the real send.
REPORT_LATE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', tonumber(score) + tonumber(ARGV[2])), ARGV[1])
end
return 0
"""

# Sends later than this after their slot are reported (a round trip each); earlier ones
# are within what the headroom absorbs.
REPORT_AFTER_SECONDS = 0.005


class BudgetRule(msgspec.Struct, frozen=True):
    """How one budget spaces its slots, in microseconds (the script's unit)."""

    interval: int
    # At most this many slots in any one window.
    limit: int
    window: int


def rule_for(rate: float, headroom: float) -> BudgetRule:
    """The rule for `rate` requests per second kept `headroom` under it, as RateGate does:
    one slot every (1 + headroom) / rate seconds, at most int(rate) (at least one) in a
    second. Slots lie exactly on that schedule, so `limit` of them span the window and
    the headroom besides: room for a node that sends a little after its slot."""
    return BudgetRule(
        interval=math.ceil(_micros((1.0 + headroom) / rate)),
        limit=max(1, int(rate)),
        window=math.ceil(_micros(WINDOW_SECONDS)),
    )


def late_tolerance(rule: BudgetRule) -> float:
    """Seconds a request may leave after its slot. `limit` slots span the window plus the
    headroom's slack: half of it for waking late, half for what follows (the request's
    own way out, network jitter). Later than that, the send is reported (REPORT_LATE)."""
    slack = rule.limit * rule.interval - rule.window
    return max(0.0, slack / 2 / MICROS)


def _micros(seconds: float) -> float:
    # Rounded to a nanosecond first, so float noise (1.05 / 10 = 0.10500000000000001)
    # does not add a microsecond to the interval.
    return round(seconds * MICROS, 3)


def rules_of(syncs: Iterable[SyncConfig]) -> dict[tuple[str, Endpoint], BudgetRule]:
    """The rule per (API key, endpoint): syncs on one key share its budget, at the lowest
    rate and the widest headroom any of them configures (as RateGates)."""
    return {key: rule_for(*tuning) for key, tuning in shared_rates(syncs).items()}


def budget_keys(prefix: str, api_key: str, endpoint: Endpoint) -> tuple[str, str]:
    """The Redis keys of one budget: its pacing and its recent grants. The API key shows
    only as a SHA-256 digest (Iterable keys are random, so the digest gives nothing away);
    the braces keep both keys in one Redis Cluster slot, as one script must."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:32]
    tag = f"{{{digest}:{endpoint.value}}}"
    return f"{prefix}:{tag}:tat", f"{prefix}:{tag}:log"


def script_args(rule: BudgetRule) -> list[int]:
    return [rule.interval, rule.limit, rule.window, math.ceil(_micros(HORIZON_SECONDS))]


class RedisRateBudget:
    """A RateBudget shared by every node that points at the same Redis and prefix.

    Within a node, the callers of one budget queue in turn (first come, first served) and
    only the head holds a reservation, so nodes take turns slot by slot however many
    batches each has waiting. When Redis cannot be reached, `acquire` raises
    RateBudgetUnavailable: without a slot nothing may be sent, so delivery keeps the
    batch and retries it later (ingest never calls the budget). A reservation whose
    caller is cancelled while it waits is left unused: the budget errs on the slow side.
    """

    def __init__(
        self, redis: Redis, syncs: Iterable[SyncConfig], prefix: str = DEFAULT_PREFIX
    ) -> None:
        self._prefix = prefix
        self._rules = rules_of(syncs)
        self._turns: dict[tuple[str, Endpoint], asyncio.Lock] = {}
        self._reserve_slot = redis.register_script(RESERVE_SLOT)
        self._report_late = redis.register_script(REPORT_LATE)
        # Reservation ids: this budget's own token and a count, unique across nodes.
        self._token = os.urandom(6).hex()
        self._reservations = itertools.count()
        self._reports: set[asyncio.Task[None]] = set()
        # Requests that left more than REPORT_AFTER_SECONDS after their slot (a busy
        # node's loop ran late), each reported so the window counts its real send.
        self.late_sends = 0
        # Slots this node woke too late to use.
        self.slots_given_up = 0

    @property
    def reporting(self) -> int:
        """Late sends whose report to Redis is still on its way."""
        return len(self._reports)

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        """Take these syncs' limits (a config reload). What Redis holds carries on: slots
        already reserved keep their times, and the window counts them."""
        self._rules = rules_of(syncs)

    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        key = (api_key, endpoint)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = asyncio.Lock()
        tolerance = late_tolerance(self._rules[key])
        async with turn:
            while True:
                wait, member = await self._reserve(api_key, endpoint)
                due = time.monotonic() + wait
                if wait > 0:
                    await asyncio.sleep(wait)
                # Woken too late (a busy loop): sent now, the slot would bunch up with the
                # ones reserved after it before any report could reach Redis. Give it up
                # (it stays counted at its time) and take a later one.
                if time.monotonic() - due <= tolerance:
                    break
                self.slots_given_up += 1
            log_key = budget_keys(self._prefix, api_key, endpoint)[1]
            # The HTTP client tells the stamp when the request's headers really left.
            return ReportedStamp(
                time.monotonic(), functools.partial(self._sent, log_key, member, due)
            )

    def _sent(self, log_key: str, member: str, due: float, at: float) -> None:
        """A busy loop sends late; a slot sent late by L would bunch up with the slot
        `limit` places after it (another node's, sent on time) unless the window counts
        it from its real send: tell Redis, before that slot is reserved."""
        late = at - due
        if late <= REPORT_AFTER_SECONDS:
            return
        self.late_sends += 1
        report = asyncio.get_running_loop().create_task(self._report(log_key, member, late))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    async def _report(self, log_key: str, member: str, late: float) -> None:
        try:
            await self._report_late(keys=[log_key], args=[member, math.ceil(late * MICROS)])
        except (RedisError, OSError):
            pass  # the slot stays counted at its reserved time: Redis is down anyway

    async def reserve(self, api_key: str, endpoint: Endpoint) -> float:
        """Reserve the next free slot; the seconds until it comes (0.0: now)."""
        return (await self._reserve(api_key, endpoint))[0]

    async def _reserve(self, api_key: str, endpoint: Endpoint) -> tuple[float, str]:
        rule = self._rules[(api_key, endpoint)]
        keys = budget_keys(self._prefix, api_key, endpoint)
        member = f"{self._token}:{next(self._reservations)}"
        try:
            micros = await self._reserve_slot(keys=list(keys), args=[*script_args(rule), member])
        except (RedisError, OSError) as error:
            raise RateBudgetUnavailable(
                f"rate budget in Redis unavailable ({endpoint.value}): "
                f"{type(error).__name__}: {error}"
            ) from error
        return int(micros) / MICROS, member
