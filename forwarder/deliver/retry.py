"""The retry policy as pure functions: how long to wait, and when to give up."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from forwarder.config import DeliveryConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped per wait; bounds that are 0 are off.

    The wait before retry n (n = 1 after the first failure) is uniform in
    [0, min(max_wait, initial * 2**(n-1))]: full jitter spreads the retries of many
    requests that failed together, so they do not come back as one burst.

    An outage is bounded by time (`max_elapsed`, and the journal's room upstream), not by
    attempts: `max_attempts` is off unless configured. Retries that Iterable decided item
    by item (notFound on trackBulk, failures counted but not named) are about the item,
    so they stop after `item_attempts` whatever the other bounds say. A user Iterable
    does not find (yet) is retried on its own schedule for `not_found_seconds`.

    A 400 that names no item is bisected within a budget: at most `max_bisect_depth`
    halvings, and 2*ceil(log2(n)) + `bisect_extra` split requests for a batch of n, so a
    batch costs about 2*log2(n) + k requests whatever Iterable answers.
    """

    # No defaults here: config.DeliveryConfig owns them (from_config(DeliveryConfig())).
    initial: float
    max_wait: float
    max_attempts: int
    max_elapsed: float
    item_attempts: int
    not_found_seconds: float
    not_found_max_wait: float
    max_bisect_depth: int
    bisect_extra: int

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetryPolicy:
        return cls(
            initial=delivery.backoff_initial_seconds,
            max_wait=delivery.backoff_max_seconds,
            max_attempts=delivery.max_attempts,
            max_elapsed=delivery.max_retry_seconds,
            item_attempts=delivery.item_retry_attempts,
            not_found_seconds=delivery.not_found_retry_seconds,
            not_found_max_wait=delivery.not_found_backoff_max_seconds,
            max_bisect_depth=delivery.max_bisect_depth,
            bisect_extra=delivery.bisect_extra_requests,
        )

    def next_delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        A Retry-After from Iterable is a floor: we never come back sooner than it asks,
        but it is capped by max_wait so a bogus header cannot stall a sync for hours.
        """
        ceiling = min(self.max_wait, self.initial * 2 ** min(max(0, attempt - 1), 64))
        delay = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_wait))
        return delay

    def gives_up(self, attempts: int, elapsed: float, item_failures: int = 0) -> bool:
        """True when an item is out of attempts or time, or of item-level retries."""
        return (
            (self.max_attempts > 0 and attempts >= self.max_attempts)
            or (self.max_elapsed > 0 and elapsed >= self.max_elapsed)
            or item_failures >= self.item_attempts
        )

    def not_found_delay(self, tries: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after not-found answer number `tries` (1-based): doubling from
        `initial` up to `not_found_max_wait`, jittered in its upper half so the wait is
        never near zero (the user needs time to become visible, not a quick resend)."""
        ceiling = min(self.not_found_max_wait, self.initial * 2 ** min(max(0, tries - 1), 64))
        return (rng or random).uniform(ceiling / 2, ceiling)

    def not_found_expired(self, since: float, now: float) -> bool:
        """True when an item has been answered not-found for long enough to stop."""
        return now - since >= self.not_found_seconds

    def bisect_budget(self, count: int) -> int:
        """Split requests a batch of `count` items may spend bisecting: 2*ceil(log2(n)) + k."""
        return 2 * math.ceil(math.log2(max(count, 1))) + self.bisect_extra
