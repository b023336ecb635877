"""A shared rate budget out of reach: the batch waits for it, counts no attempt, and goes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from forwarder.cluster.errors import RateBudgetUnavailable
from forwarder.config import SyncConfig
from forwarder.deliver import patient_budget
from forwarder.deliver.patient_budget import PatientBudget
from forwarder.deliver.rate import SendStamp
from forwarder.deliver.stats import DeliveryStats
from forwarder.iterable import Endpoint


class FlakyBudget:
    """Refuses its first `failures` turns as an unreachable Redis would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked = 0

    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        self.asked += 1
        if self.asked <= self.failures:
            raise RateBudgetUnavailable("rate budget in Redis unavailable: ConnectionError")
        return [0.0]

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        return None


async def test_an_unreachable_budget_is_waited_out_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(patient_budget, "BUDGET_RETRY_SECONDS", 0.01)
    stats = DeliveryStats()
    flaky = FlakyBudget(failures=3)
    budget = PatientBudget(flaky, "test", stats)
    stamp = await asyncio.wait_for(budget.acquire("key", Endpoint.TRACK_BULK), 5)
    assert stamp == [0.0] and flaky.asked == 4
    assert stats.budget_waits[Endpoint.TRACK_BULK.value] == 3
    assert stats.last_error is not None and "unavailable" in stats.last_error
    # One log line for the run, not one per turn.
    lines = [r for r in caplog.records if "rate budget unavailable" in r.getMessage()]
    assert len(lines) == 1
