"""The retry policy: full-jitter bounds, Retry-After floor, giving up."""

from __future__ import annotations

import dataclasses
import random

import pytest

from forwarder.config import DeliveryConfig, parse_config
from forwarder.deliver.retry import RetryPolicy
from forwarder.errors import ConfigError


def policy_with(**overrides: float) -> RetryPolicy:
    """The default policy (config.toml's defaults) with some bounds changed."""
    return dataclasses.replace(RetryPolicy.from_config(DeliveryConfig()), **overrides)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)]
)
def test_delay_is_full_jitter_under_a_capped_exponential(attempt: int, ceiling: float) -> None:
    policy = policy_with(initial=0.5, max_wait=30.0)
    rng = random.Random(7)
    delays = [policy.next_delay(attempt, None, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
    assert min(delays) < ceiling * 0.2


def test_a_very_long_outage_keeps_the_cap_and_never_overflows() -> None:
    policy = policy_with(initial=0.5, max_wait=30.0)
    rng = random.Random(3)
    assert all(0.0 <= policy.next_delay(n, None, rng) <= 30.0 for n in (1_100, 10**6))


def test_retry_after_is_a_floor_capped_by_max_wait() -> None:
    policy = policy_with(initial=0.5, max_wait=30.0)
    rng = random.Random(1)
    assert all(policy.next_delay(1, 5.0, rng) >= 5.0 for _ in range(100))
    assert policy.next_delay(1, 10_000.0, rng) == 30.0


@pytest.mark.parametrize(
    ("attempts", "elapsed", "gives_up"),
    [(1, 0.0, False), (7, 10.0, False), (8, 0.0, True), (2, 300.0, True), (2, 299.9, False)],
)
def test_gives_up_on_attempts_or_time(attempts: int, elapsed: float, gives_up: bool) -> None:
    policy = policy_with(max_attempts=8, max_elapsed=300.0)
    assert policy.gives_up(attempts, elapsed) is gives_up


def test_by_default_an_outage_ends_by_time_only() -> None:
    policy = RetryPolicy.from_config(DeliveryConfig())
    assert policy.max_attempts == 0 and policy.max_elapsed == 6 * 3600
    assert not policy.gives_up(100_000, 6 * 3600 - 1)
    assert policy.gives_up(3, 6 * 3600)


def test_zero_turns_a_bound_off() -> None:
    forever = policy_with(max_attempts=0, max_elapsed=0.0)
    assert not forever.gives_up(10**9, 10.0**9)


@pytest.mark.parametrize(("failures", "gives_up"), [(0, False), (7, False), (8, True)])
def test_item_level_retries_have_a_bound_of_their_own(failures: int, gives_up: bool) -> None:
    policy = policy_with(max_attempts=0, max_elapsed=0.0, item_attempts=8)
    assert policy.gives_up(failures, 1.0, item_failures=failures) is gives_up


def delivery_config(**delivery: object) -> dict[str, object]:
    return {
        "server": {"api_keys": ["a"]},
        "syncs": [{"name": "s", "api_key": "k", "delivery": delivery}],
    }


@pytest.mark.parametrize(
    ("delivery", "path"),
    [
        ({"max_attempts": -1}, "syncs[0].delivery.max_attempts"),
        ({"max_retry_seconds": -5}, "syncs[0].delivery.max_retry_seconds"),
        ({"item_retry_attempts": 0}, "syncs[0].delivery.item_retry_attempts"),
        ({"outage_pause_after_failures": 0}, "syncs[0].delivery.outage_pause_after_failures"),
        ({"outage_pause_after_seconds": -1}, "syncs[0].delivery.outage_pause_after_seconds"),
        (
            {"outage_probe_seconds": 10, "outage_probe_max_seconds": 5},
            "syncs[0].delivery.outage_probe_max_seconds",
        ),
    ],
)
def test_retry_and_outage_settings_out_of_range_name_their_key(
    delivery: dict[str, object], path: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(delivery_config(**delivery), env={})
    assert error.value.path == path


def test_zero_bounds_are_valid_settings() -> None:
    config = parse_config(
        delivery_config(max_attempts=0, max_retry_seconds=0, outage_pause_after_seconds=0),
        env={},
    )
    assert config.syncs[0].delivery.max_retry_seconds == 0
