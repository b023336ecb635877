"""The durable log role: append and wait until durable, replay past a checkpoint, acknowledge.

The file journal implements it in the embedded mode; `NoLog` stands in for it when
durability is "memory". A cluster wires another engine behind the same methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# How far a long job got, as (done, in all): bytes a log has read back at start, records
# replayed.
ProgressReport = Callable[[int, int], None]


@dataclass(slots=True)
class LogStats:
    """What a log tells /status and /metrics about itself."""

    disk_bytes: int = 0
    last_seq: int = 0
    checkpoint: int = 0
    commits: int = 0
    recovery_problems: list[str] = field(default_factory=list)
    recovery_skipped_bytes: int = 0  # damaged bytes recovery skipped (copied aside)
    write_failures: int = 0  # group writes that failed and were cut back (503s)
    saved_checkpoint: int = 0  # the checkpoint on disk: a restart replays past it


class DurableLog(Protocol):
    # False when nothing is written: callers need not even encode records.
    durable: bool

    @property
    def full(self) -> bool:
        """True past the log's disk cap: ingest answers 429 until delivery catches up."""

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest record appended."""

    async def recover(self, progress: ProgressReport | None = None) -> list[tuple[int, bytes]]:
        """The records past the checkpoint, oldest first; then the log takes appends.

        The caller tells `expect` how many acknowledgements each of them waits for.
        `progress(bytes read, bytes in all)` is called as reading goes (maybe from
        another thread), so a long start can tell systemd it is alive.
        """

    def expect(self, seq: int, items: int) -> None:
        """A recovered record is settled after `items` acknowledgements."""

    def start(self) -> None:
        """Begin writing appended records."""

    def append(self, payload: bytes, items: int) -> asyncio.Future[int]:
        """Queue a record settled after `items` acknowledgements; the future gives its
        seq once the record is durable, and futures complete in seq order. It raises
        StorageUnavailable when the record could not be made durable."""

    def acknowledge(self, seq: int, items: int = 1) -> None:
        """Items of record `seq` were delivered or dead-lettered."""

    async def save_checkpoint(self, durable_through: int) -> None:
        """Let the log drop settled records up to `durable_through` at most (raises
        StorageUnavailable when the disk refuses)."""

    def stats(self) -> LogStats:
        """Counters for /status and /metrics."""

    async def close(self) -> None:
        """Write what is queued and release the files."""


class NoLog:
    """durability = "memory": nothing is written, so nothing is replayed or waited for."""

    durable = False
    full = False
    last_seq = 0

    async def recover(self, progress: ProgressReport | None = None) -> list[tuple[int, bytes]]:
        return []

    def expect(self, seq: int, items: int) -> None:
        return None

    def start(self) -> None:
        return None

    def append(self, payload: bytes, items: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(0)
        return future

    def acknowledge(self, seq: int, items: int = 1) -> None:
        return None

    async def save_checkpoint(self, durable_through: int) -> None:
        return None

    def stats(self) -> LogStats:
        return LogStats()

    async def close(self) -> None:
        return None
