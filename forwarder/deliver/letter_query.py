"""Reading dead-letter files for the operator: summaries, the letters, and purging them."""

from __future__ import annotations

from collections.abc import Iterator

from forwarder.config import Config, SyncConfig
from forwarder.deliver.letter_select import LetterFilter, SyncSummary
from forwarder.store.dead_letters import DeadLetter, dead_letter_path, letter_id, read_lines
from forwarder.store.letter_aside import PURGING, take_aside


def chosen_syncs(config: Config, sync_name: str | None) -> list[SyncConfig]:
    """The configured syncs, or the one named; KeyError when no sync has that name."""
    syncs = [s for s in config.syncs if sync_name is None or s.name == sync_name]
    if sync_name is not None and not syncs:
        raise KeyError(sync_name)
    return syncs


def summarize(config: Config, sync_name: str | None, chosen: LetterFilter) -> list[SyncSummary]:
    """Per sync, the matching letters by kind with the oldest and newest (no item, no email)."""
    summaries = []
    for sync in chosen_syncs(config, sync_name):
        summary = SyncSummary(sync.name)
        for line, letter in read_lines(dead_letter_path(config.storage.path, sync.name)):
            if not isinstance(letter, DeadLetter):
                summary.unreadable += 1
            elif chosen.matches(letter, letter_id(line)):
                summary.add(letter)
        summaries.append(summary)
    return summaries


def matching(
    config: Config, sync_name: str | None, chosen: LetterFilter
) -> Iterator[tuple[str, DeadLetter]]:
    """Each matching letter with its id, file by file in file order."""
    for sync in chosen_syncs(config, sync_name):
        for line, letter in read_lines(dead_letter_path(config.storage.path, sync.name)):
            if isinstance(letter, DeadLetter):
                ident = letter_id(line)
                if chosen.matches(letter, ident):
                    yield ident, letter


def purge(config: Config, sync_name: str | None, chosen: LetterFilter) -> list[SyncSummary]:
    """Remove the matching letters; per sync, what was removed.

    Safe beside a running daemon: the file is moved aside and the rest appended back
    (`take_aside`), so a letter the daemon appends meanwhile lands in the fresh file.
    """
    removed = []
    fsync = config.storage.durability == "journal"
    for sync in chosen_syncs(config, sync_name):
        summary = SyncSummary(sync.name)

        def take(line: bytes, letter: DeadLetter, summary: SyncSummary = summary) -> bool:
            if not chosen.matches(letter, letter_id(line)):
                return False
            summary.add(letter)
            return True

        path = dead_letter_path(config.storage.path, sync.name)
        aside = take_aside(path, take, PURGING, fsync)
        if aside is not None:
            aside.path.unlink()
        removed.append(summary)
    return removed
