"""What one sync's delivery counts, for /metrics and /status: plain counters, cheap to bump."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from forwarder.errors import FailureKind

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
    """Counters one sync keeps about its delivery."""

    delivered: Counter[str] = field(default_factory=Counter)
    dead: Counter[FailureKind] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    responses: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    items_sent: Counter[str] = field(default_factory=Counter)
    # Turns the shared rate budget (Redis) could not give, by endpoint: the batch waited.
    budget_waits: Counter[str] = field(default_factory=Counter)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    in_flight: int = 0
    # Dead letters the disk refused so far: their items wait, unacknowledged.
    dead_letters_unwritten: int = 0
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
