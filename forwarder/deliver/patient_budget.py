"""A rate budget that waits out a shared budget it cannot reach, rather than fail the batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from forwarder.cluster.errors import RateBudgetUnavailable
from forwarder.config import SyncConfig
from forwarder.deliver.notices import Notices
from forwarder.deliver.rate import RateBudget, SendStamp
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import scrub
from forwarder.iterable import Endpoint

log = logging.getLogger("forwarder.sender")

# Seconds between tries of a budget that could not be reached (Redis down or slow).
BUDGET_RETRY_SECONDS = 1.0
# At most one "budget unavailable" line per sync per this many seconds.
NOTICE_SECONDS = 30.0


class PatientBudget:
    """One sync's view of the rate budget: when the budget (Redis, in a cluster) cannot be
    reached, the caller waits and asks again.

    Without a slot nothing may go out (a send could break Iterable's limit), and the
    outage is ours, not Iterable's: the batch keeps its place and its items count no
    attempt, so a Redis outage never turns items into dead letters nor pauses the sync.
    """

    def __init__(self, budget: RateBudget, sync: str, stats: DeliveryStats) -> None:
        self.budget = budget
        self.sync = sync
        self.stats = stats
        self._notices = Notices(NOTICE_SECONDS)

    def configure(self, syncs: Iterable[SyncConfig]) -> None:
        self.budget.configure(syncs)

    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        while True:
            try:
                return await self.budget.acquire(api_key, endpoint)
            except RateBudgetUnavailable as error:
                self._unavailable(endpoint, error)
            await asyncio.sleep(BUDGET_RETRY_SECONDS)

    def _unavailable(self, endpoint: Endpoint, error: RateBudgetUnavailable) -> None:
        self.stats.budget_waits[endpoint.value] += 1
        self.stats.last_error_at = time.time()
        self.stats.last_error = scrub(str(error))
        held = self._notices.due(endpoint, time.monotonic())
        if held is not None:
            log.warning(
                "rate budget unavailable, requests wait and retry every %g s: %s%s",
                BUDGET_RETRY_SECONDS,
                scrub(str(error)),
                f" ({held} more like it held back)" if held else "",
                extra={"sync": self.sync, "endpoint": endpoint.value},
            )
