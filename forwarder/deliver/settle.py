"""Where items leave a sync for good: delivered, or written as dead letters; then acknowledged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from forwarder.deliver.lanes import Queued
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import DeadLetterFile, make_letter

log = logging.getLogger("forwarder.sender")

# Told of every log record's items once they are settled: (seq, how many items).
Acknowledge = Callable[[int, int], None]


@dataclass(eq=False)
class Settlement:
    """Settles one sync's items for good: counts them, writes dead letters, acknowledges."""

    sync: str
    stats: DeliveryStats
    dead_letters: DeadLetterFile
    acknowledge: Acknowledge

    def delivered(self, endpoint: Endpoint, items: Sequence[Queued]) -> None:
        if not items:
            return
        self.stats.delivered[endpoint.value] += len(items)
        self.stats.last_success_at = time.time()
        self._settled(items, delivered=True)

    def dead(self, letters: Sequence[tuple[Queued, Failure]]) -> None:
        if not letters:
            return
        records = [
            make_letter(self.sync, q.endpoint, q.item, failure, max(q.attempts, 1))
            for q, failure in letters
        ]
        try:
            self.dead_letters.write(records)
        except OSError:
            log.exception("cannot write dead letters", extra={"sync": self.sync})
        for _, failure in letters:
            self.stats.dead[failure.kind] += 1
        self._settled([q for q, _ in letters], delivered=False)

    def _settled(self, items: Sequence[Queued], delivered: bool) -> None:
        count = len(items)
        self.stats.recent.append(
            (time.time(), count if delivered else 0, 0 if delivered else count)
        )
        for queued in items:
            if queued.seq is not None:
                self.acknowledge(queued.seq, 1)
