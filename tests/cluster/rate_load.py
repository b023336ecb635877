"""Load for the shared rate budget tests: nodes that acquire under backlog, and the
measures of what they got."""

from __future__ import annotations

import asyncio
import bisect
import time

from redis.asyncio import Redis

from forwarder.cluster.clients import redis_client
from forwarder.cluster.rate import RedisRateBudget
from forwarder.config import DeliveryConfig, LimitsConfig, SyncConfig
from forwarder.iterable import Endpoint

ENDPOINT = Endpoint.TRACK_BULK


def sync_at(api_key: str, rate: float, headroom: float) -> SyncConfig:
    """A sync whose trackBulk budget is `rate` per second, `headroom` under it."""
    return SyncConfig(
        name="load",
        api_key=api_key,
        limits=LimitsConfig(track_bulk_per_second=rate),
        delivery=DeliveryConfig(rate_headroom=headroom),
    )


def budget_for(
    url: str, api_key: str, rate: float, headroom: float
) -> tuple[RedisRateBudget, Redis]:
    """A node's budget on its own Redis client, as a separate process would have."""
    client = redis_client(url, timeout=5.0)
    return RedisRateBudget(client, [sync_at(api_key, rate, headroom)]), client


async def acquire_until(
    budget: RedisRateBudget, api_key: str, start: float, end: float, tasks: int
) -> list[float]:
    """From `start` to `end` (time.monotonic()), `tasks` senders that each want a slot as
    soon as they had the last one (a backlog); the times their acquires returned."""
    times: list[float] = []

    async def sender() -> None:
        while time.monotonic() < end:
            await budget.acquire(api_key, ENDPOINT)
            now = time.monotonic()
            if now < end:
                times.append(now)

    await asyncio.sleep(max(0.0, start - time.monotonic()))
    # Bounded: each sender stops at `end`, plus the one acquire it may be waiting in.
    await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(tasks))), end - start + 5)
    return times


def most_in_a_window(times: list[float], window: float = 1.0) -> int:
    """The most acquisitions in any window [t, t + window) over all of `times` (a window
    that starts at an acquisition holds at least as many as any other)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def tightest_span(times: list[float], count: int) -> float:
    """The shortest time from an acquisition to the `count`-th after it: at least a
    second means no one-second window held more than `count` of them."""
    ordered = sorted(times)
    return min((ordered[i + count] - ordered[i] for i in range(len(ordered) - count)), default=0)
