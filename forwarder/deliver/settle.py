"""Where items leave a sync for good: delivered, or written as dead letters; then acknowledged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from forwarder.deliver.lanes import Queued
from forwarder.deliver.notices import DeadLetterNotice
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import Failure, ForwarderError
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import DeadLetterCapReached, DeadLetterSink, make_letter

log = logging.getLogger("forwarder.sender")

# Told of every log record's items once they are settled: (seq, how many items).
Acknowledge = Callable[[int, int], None]


# Seconds between attempts to write dead letters the disk refused.
DEAD_LETTER_RETRY_SECONDS = 1.0
# Dead letters are told in one line at most per this many seconds per sync (with counts).
DEAD_LETTER_NOTICE_SECONDS = 30.0


@dataclass(eq=False)
class Settlement:
    """Settles one sync's items for good: counts them, writes dead letters, acknowledges.

    A dead item is settled only once its letter is durably written. Letters the disk
    (or Redis) refuses (full, read-only, out of file handles, unreachable) wait in
    `unwritten`, unacknowledged, so the journal keeps their records, and are written
    again every second. A letter stays in `unwritten` while its write is under way, so
    a drain waits for it and a stop hands it back.
    """

    sync: str
    stats: DeliveryStats
    dead_letters: DeadLetterSink
    acknowledge: Acknowledge
    unwritten: list[tuple[Queued, Failure]] = field(default_factory=list)
    _retry: asyncio.TimerHandle | None = None
    # A write to a store that answers later (Redis): the next waits for it.
    _writing: asyncio.Task[None] | None = None
    _notice: DeadLetterNotice = field(init=False)

    def __post_init__(self) -> None:
        where = self.dead_letters.where
        self._notice = DeadLetterNotice(self.sync, where, DEAD_LETTER_NOTICE_SECONDS, log)

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
        if self._retry is None and self._writing is None:
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        self._retry = None
        count = len(self.unwritten)
        records = [
            make_letter(
                self.sync, q.endpoint, q.item, failure, max(q.attempts, 1), _first_failed_at(q)
            )
            for q, failure in self.unwritten
        ]
        try:
            result = self.dead_letters.write(records)
        except (OSError, ForwarderError) as error:
            self._written(count, 0, error)
            return
        if isinstance(result, int):
            self._written(count, result, None)
        else:
            self._writing = asyncio.create_task(self._await_write(count, result))

    async def _await_write(self, count: int, result: Awaitable[int]) -> None:
        try:
            written, refusal = await result, None
        except (OSError, ForwarderError) as error:
            written, refusal = 0, error
        finally:
            self._writing = None
        self._written(count, written, refusal)
        if self.unwritten and self._retry is None:
            self._write_unwritten()  # letters that came while this write was out

    def _written(self, count: int, written: int, refusal: Exception | None) -> None:
        """The first `count` unwritten letters were offered and `written` of them went."""
        letters = self.unwritten[:written]
        del self.unwritten[:written]
        waiting = self.stats.dead_letters_unwritten
        if refusal is None and written < count:
            # The cap took the first letters only: the rest wait as for a full disk.
            sink = self.dead_letters
            refusal = DeadLetterCapReached(sink.where, sink.size(), sink.max_bytes or 0)
        if refusal is not None:
            self._wait_for_disk(refusal, first=not waiting)
            if not letters:
                return
        elif waiting:
            log.warning(
                "%d dead letter(s) written after all", len(letters), extra={"sync": self.sync}
            )
            self.stats.dead_letters_unwritten = 0
        for _, failure in letters:
            self.stats.dead[failure.kind] += 1
        self._notice.add(failure for _, failure in letters)
        self._settled([q for q, _ in letters], delivered=False)

    def _wait_for_disk(self, error: Exception, first: bool) -> None:
        """Keep letters the disk (or the cap) refused, and write them again in a second."""
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

    def close(self) -> None:
        """Stop retrying; what is unwritten stays unacknowledged (the journal replays it)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._writing is not None:
            # Its letters are still in `unwritten`: handed back as unsettled.
            self._writing.cancel()
            self._writing = None
        self._notice.flush()

    def _settled(self, items: Sequence[Queued], delivered: bool) -> None:
        originals = [original for queued in items for original in queued.originals]
        count = len(originals)
        self.stats.recent.append(
            (time.time(), count if delivered else 0, 0 if delivered else count)
        )
        for queued in originals:
            if queued.seq is not None:
                self.acknowledge(queued.seq, 1)
            if queued.origin is not None:
                queued.origin.settled(queued.origin, delivered)


def _first_failed_at(queued: Queued) -> float | None:
    """When a replayed item first failed (the earliest of the letters merged into it):
    its new letter keeps that beside its new `time`."""
    times = [q.origin.letter.failed_first for q in queued.originals if q.origin is not None]
    return min(times) if times else None
