"""The retry policy: full-jitter bounds, Retry-After floor, giving up."""

from __future__ import annotations

import random

import pytest

from forwarder.deliver.retry import RetryPolicy


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)]
)
def test_delay_is_full_jitter_under_a_capped_exponential(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(initial=0.5, max_wait=30.0)
    rng = random.Random(7)
    delays = [policy.next_delay(attempt, None, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
    assert min(delays) < ceiling * 0.2


def test_retry_after_is_a_floor_capped_by_max_wait() -> None:
    policy = RetryPolicy(initial=0.5, max_wait=30.0)
    rng = random.Random(1)
    assert all(policy.next_delay(1, 5.0, rng) >= 5.0 for _ in range(100))
    assert policy.next_delay(1, 10_000.0, rng) == 30.0


@pytest.mark.parametrize(
    ("attempts", "elapsed", "gives_up"),
    [(1, 0.0, False), (7, 10.0, False), (8, 0.0, True), (2, 300.0, True), (2, 299.9, False)],
)
def test_gives_up_on_attempts_or_time(attempts: int, elapsed: float, gives_up: bool) -> None:
    policy = RetryPolicy(max_attempts=8, max_elapsed=300.0)
    assert policy.gives_up(attempts, elapsed) is gives_up
