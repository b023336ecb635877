"""Where items leave a sync for good: delivered, or written as dead letters; then acknowledged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forwarder.deliver.lanes import Queued
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import DeadLetterFile, make_letter

log = logging.getLogger("forwarder.sender")

# Told of every log record's items once they are settled: (seq, how many items).
Acknowledge = Callable[[int, int], None]


# Seconds between attempts to write dead letters the disk refused.
DEAD_LETTER_RETRY_SECONDS = 1.0


@dataclass(eq=False)
class Settlement:
    """Settles one sync's items for good: counts them, writes dead letters, acknowledges.

    A dead item is settled only once its letter is durably written. Letters the disk
    refuses (full, read-only, out of file handles) wait in `unwritten`, unacknowledged,
    so the journal keeps their records, and are written again every second.
    """

    sync: str
    stats: DeliveryStats
    dead_letters: DeadLetterFile
    acknowledge: Acknowledge
    unwritten: list[tuple[Queued, Failure]] = field(default_factory=list)
    _retry: asyncio.TimerHandle | None = None

    def delivered(self, endpoint: Endpoint, items: Sequence[Queued]) -> None:
        if not items:
            return
        self.stats.delivered[endpoint.value] += sum(len(q.originals) for q in items)
        self.stats.last_success_at = time.time()
        self._settled(items, delivered=True)

    def dead(self, letters: Sequence[tuple[Queued, Failure]]) -> None:
        if not letters:
            return
        self.unwritten.extend(letters)
        if self._retry is None:
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        self._retry = None
        letters, self.unwritten = self.unwritten, []
        records = [
            make_letter(self.sync, q.endpoint, q.item, failure, max(q.attempts, 1))
            for q, failure in letters
        ]
        try:
            self.dead_letters.write(records)
        except OSError as error:
            first = not self.stats.dead_letters_unwritten
            self.unwritten = letters + self.unwritten
            self.stats.dead_letters_unwritten = len(self.unwritten)
            self.stats.last_error_at = time.time()
            self.stats.last_error = f"cannot write dead letters: {error}"
            if first:
                log.error(
                    "cannot write %d dead letter(s), keeping them until the disk takes them: %s",
                    len(self.unwritten),
                    error,
                    extra={"sync": self.sync},
                )
            self._retry = asyncio.get_running_loop().call_later(
                DEAD_LETTER_RETRY_SECONDS, self._write_unwritten
            )
            return
        if self.stats.dead_letters_unwritten:
            log.warning(
                "%d dead letter(s) written after all", len(letters), extra={"sync": self.sync}
            )
        self.stats.dead_letters_unwritten = 0
        for _, failure in letters:
            self.stats.dead[failure.kind] += 1
        self._settled([q for q, _ in letters], delivered=False)

    def close(self) -> None:
        """Stop retrying; what is unwritten stays unacknowledged (the journal replays it)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _settled(self, items: Sequence[Queued], delivered: bool) -> None:
        originals = [original for queued in items for original in queued.originals]
        count = len(originals)
        self.stats.recent.append(
            (time.time(), count if delivered else 0, 0 if delivered else count)
        )
        for queued in originals:
            if queued.seq is not None:
                self.acknowledge(queued.seq, 1)
