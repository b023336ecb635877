"""The retry policy as pure functions: how long to wait, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from forwarder.config import DeliveryConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped per wait, bounded in attempts and time.

    The wait before retry n (n = 1 after the first failure) is uniform in
    [0, min(max_wait, initial * 2**(n-1))]: full jitter spreads the retries of many
    requests that failed together, so they do not come back as one burst.
    """

    initial: float = 0.5
    max_wait: float = 30.0
    max_attempts: int = 8
    max_elapsed: float = 300.0

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetryPolicy:
        return cls(
            initial=delivery.backoff_initial_seconds,
            max_wait=delivery.backoff_max_seconds,
            max_attempts=delivery.max_attempts,
            max_elapsed=delivery.max_retry_seconds,
        )

    def next_delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        A Retry-After from Iterable is a floor: we never come back sooner than it asks,
        but it is capped by max_wait so a bogus header cannot stall a sync for hours.
        """
        ceiling = min(self.max_wait, self.initial * 2 ** max(0, attempt - 1))
        delay = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_wait))
        return delay

    def gives_up(self, attempts: int, elapsed: float) -> bool:
        """True when an item failed `attempts` times or has been retried for too long."""
        return attempts >= self.max_attempts or elapsed >= self.max_elapsed
