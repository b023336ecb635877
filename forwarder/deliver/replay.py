"""Replay without a daemon: this process delivers the chosen dead letters itself.

Used only when no daemon answers at the admin address; beside a running daemon the CLI
asks it instead (`replay_client.py`), so the daemon's one rate budget covers both.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.config import Config, SyncConfig
from forwarder.deliver.letter_query import chosen_syncs
from forwarder.deliver.letter_select import LetterFilter
from forwarder.deliver.rate import RateGates
from forwarder.deliver.replay_job import ReplayProgress, SyncReplay, progress_line
from forwarder.deliver.sync import SyncDelivery
from forwarder.store.dead_letters import DeadLetter, DeadLetterFile, dead_letter_path, letter_id
from forwarder.store.letter_aside import REPLAYING, take_aside

# Seconds between progress lines.
PROGRESS_SECONDS = 1.0


@dataclass
class ReplayResult:
    sync: str
    resent: int = 0
    delivered: int = 0
    dead_again: int = 0
    # Not answered within the timeout: back in the dead-letter file as they were.
    left: int = 0
    unsendable: int = 0


async def replay(
    config: Config,
    sync_name: str | None = None,
    timeout: float = 600.0,
    chosen: LetterFilter = LetterFilter(),
    report: Callable[[str], None] | None = None,
) -> list[ReplayResult]:
    """Resend the chosen dead letters; what fails again is dead-lettered again.

    The letters are moved aside first, so a process appending beside us writes to a
    fresh file and no letter is read twice or lost.
    """
    results = []
    deadline = time.monotonic() + timeout
    for sync in chosen_syncs(config, sync_name):
        if sync.enabled:
            left = max(0.0, deadline - time.monotonic())
            results.append(await _replay_sync(config, sync, chosen, left, report))
    return results


async def _replay_sync(
    config: Config,
    sync: SyncConfig,
    chosen: LetterFilter,
    timeout: float,
    report: Callable[[str], None] | None,
) -> ReplayResult:
    path = dead_letter_path(config.storage.path, sync.name)
    fsync = config.storage.durability == "journal"

    def pick(line: bytes, letter: DeadLetter) -> bool:
        return chosen.matches(letter, letter_id(line))

    aside = take_aside(path, pick, REPLAYING, fsync)
    if aside is None or not aside.count:
        if aside is not None:
            aside.path.unlink()
        return ReplayResult(sync.name)
    dead_file = DeadLetterFile(path, fsync, config.storage.dead_letter_max_bytes)
    # Nothing to acknowledge: the letters came from a file, not from the durable log.
    delivery = SyncDelivery(sync, RateGates([sync]), dead_file, acknowledge=lambda seq, n: None)
    job = SyncReplay(delivery, aside)
    await delivery.start()
    feeding = asyncio.create_task(job.run())
    reporting = asyncio.create_task(_report_every(job.progress, report)) if report else None
    try:
        await asyncio.wait_for(job.done.wait(), timeout)
    except TimeoutError:
        pass
    finally:
        feeding.cancel()
        if reporting is not None:
            reporting.cancel()
        await asyncio.gather(feeding, *([reporting] if reporting else []), return_exceptions=True)
        await delivery.stop()
        left = job.put_back(dead_file)
    if report is not None:
        report(progress_line([job.progress]))
    p = job.progress
    return ReplayResult(sync.name, p.resent, p.delivered, p.dead_again, left, p.unsendable)


async def _report_every(progress: ReplayProgress, report: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        report(progress_line([progress]))


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_replay(
    config: Config, sync_name: str | None, timeout: float, chosen: LetterFilter = LetterFilter()
) -> list[ReplayResult]:
    return asyncio.run(replay(config, sync_name, timeout, chosen, report=to_stderr))
