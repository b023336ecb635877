"""`forwarder dead-letters`: count dead letters by reason, and resend them on request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from forwarder.config import Config, SyncConfig
from forwarder.deliver.rate import RateGates
from forwarder.deliver.sync import SyncDelivery
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import (
    DeadLetter,
    DeadLetterFile,
    dead_letter_path,
    make_letter,
    read_letters,
)


@dataclass
class ReplayResult:
    sync: str
    resent: int = 0
    delivered: int = 0
    dead_again: int = 0
    unreadable: int = 0


def count_by_reason(config: Config, sync_name: str | None = None) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for sync in _chosen(config, sync_name):
        counter: Counter[str] = Counter()
        for letter in read_letters(dead_letter_path(config.storage.path, sync.name)):
            counter[letter.label if isinstance(letter, DeadLetter) else "unreadable line"] += 1
        counts[sync.name] = counter
    return counts


def _chosen(config: Config, sync_name: str | None) -> list[SyncConfig]:
    syncs = [s for s in config.syncs if sync_name is None or s.name == sync_name]
    if sync_name is not None and not syncs:
        raise KeyError(sync_name)
    return syncs


async def replay(
    config: Config, sync_name: str | None = None, timeout: float = 600.0
) -> list[ReplayResult]:
    """Resend every dead letter; what fails again is dead-lettered again with its new reason.

    The file is moved aside first, so a daemon running beside us keeps appending to a
    fresh file and no letter is read twice or lost.
    """
    results = []
    for sync in _chosen(config, sync_name):
        if sync.enabled:
            results.append(await _replay_sync(config, sync, timeout))
    return results


async def _replay_sync(config: Config, sync: SyncConfig, timeout: float) -> ReplayResult:
    path = dead_letter_path(config.storage.path, sync.name)
    result = ReplayResult(sync.name)
    if not path.exists():
        return result
    aside = path.with_name(f"{path.name}.replaying-{int(time.time() * 1000)}")
    path.rename(aside)
    letters: list[DeadLetter] = []
    unreadable: list[str] = []
    for letter in read_letters(aside):
        (letters.append if isinstance(letter, DeadLetter) else unreadable.append)(letter)  # type: ignore[arg-type]
    result.unreadable = len(unreadable)
    dead_file = DeadLetterFile(path, fsync=config.storage.durability == "journal")
    # Nothing to acknowledge: the letters came from a file, not from the durable log.
    delivery = SyncDelivery(sync, RateGates([sync]), dead_file, acknowledge=lambda seq, n: None)
    await delivery.start()
    try:
        for letter in letters:
            delivery.enqueue(Endpoint(letter.endpoint), letter.to_item())
            result.resent += 1
        await delivery.flush(timeout)
    finally:
        left = await delivery.stop()
    result.delivered = sum(delivery.stats.delivered.values())
    # Whatever did not get an answer in time goes back as it was.
    timed_out = Failure(FailureKind.REPLAY_TIMEOUT, f"no answer within {timeout:g} s of replay")
    dead_file.write(
        [make_letter(sync.name, q.endpoint, q.item, timed_out, q.attempts) for q in left]
    )
    result.dead_again = sum(delivery.stats.dead.values()) + len(left)
    if unreadable:
        _keep_unreadable(aside, path)
    else:
        aside.unlink()
    return result


def _keep_unreadable(aside: Path, path: Path) -> None:
    # Lines we could not decode are not ours to delete: leave the moved file for a human.
    aside.rename(path.with_name(path.name + ".unreadable"))


def run_replay(config: Config, sync_name: str | None, timeout: float) -> list[ReplayResult]:
    return asyncio.run(replay(config, sync_name, timeout))
