"""The retry policy as pure functions: how long to wait, and when to give up."""

from __future__ import annotations

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
    so they stop after `item_attempts` whatever the other bounds say.
    """

    # No defaults here: config.DeliveryConfig owns them (from_config(DeliveryConfig())).
    initial: float
    max_wait: float
    max_attempts: int
    max_elapsed: float
    item_attempts: int

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetryPolicy:
        return cls(
            initial=delivery.backoff_initial_seconds,
            max_wait=delivery.backoff_max_seconds,
            max_attempts=delivery.max_attempts,
            max_elapsed=delivery.max_retry_seconds,
            item_attempts=delivery.item_retry_attempts,
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
