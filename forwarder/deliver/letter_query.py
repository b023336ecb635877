"""Reading dead-letter files for the operator: summaries, the letters, and purging them."""

from __future__ import annotations

import asyncio
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


def letter_files(config: Config, sync_name: str | None) -> list[str]:
    """The syncs whose letters to read: the configured ones (or the one named), and any
    other sync with a dead-letter file, such as one a reload removed (its items became
    `sync_removed` letters); KeyError when the named one is neither."""
    names = [s.name for s in config.syncs if sync_name is None or s.name == sync_name]
    folder = dead_letter_path(config.storage.path, "-").parent
    if folder.is_dir():
        for path in sorted(folder.glob("*.jsonl")):
            name = path.name.removesuffix(".jsonl")
            if name not in names and (sync_name is None or name == sync_name):
                names.append(name)
    if sync_name is not None and not names:
        raise KeyError(sync_name)
    return names


def summarize(config: Config, sync_name: str | None, chosen: LetterFilter) -> list[SyncSummary]:
    """Per sync, the matching letters by kind with the oldest and newest (no item, no email)."""
    if config.cluster is not None:
        from forwarder.cluster import letter_query as in_redis  # redis only in cluster mode

        return asyncio.run(in_redis.summarize(config, sync_name, chosen))
    summaries = []
    for name in letter_files(config, sync_name):
        summary = SyncSummary(name)
        for line, letter in read_lines(dead_letter_path(config.storage.path, name)):
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
    if config.cluster is not None:
        from forwarder.cluster import letter_query as in_redis

        yield from asyncio.run(in_redis.matching(config, sync_name, chosen))
        return
    for name in letter_files(config, sync_name):
        for line, letter in read_lines(dead_letter_path(config.storage.path, name)):
            if isinstance(letter, DeadLetter):
                ident = letter_id(line)
                if chosen.matches(letter, ident):
                    yield ident, letter


def purge(config: Config, sync_name: str | None, chosen: LetterFilter) -> list[SyncSummary]:
    """Remove the matching letters; per sync, what was removed.

    Safe beside a running daemon: the file is moved aside and the rest appended back
    (`take_aside`), so a letter the daemon appends meanwhile lands in the fresh file.
    In cluster mode the letters are deleted from their Redis stream by entry id.
    """
    if config.cluster is not None:
        from forwarder.cluster import letter_query as in_redis

        return asyncio.run(in_redis.purge(config, sync_name, chosen))
    removed = []
    fsync = config.storage.durability == "journal"
    for name in letter_files(config, sync_name):
        summary = SyncSummary(name)

        def take(line: bytes, letter: DeadLetter, summary: SyncSummary = summary) -> bool:
            if not chosen.matches(letter, letter_id(line)):
                return False
            summary.add(letter)
            return True

        path = dead_letter_path(config.storage.path, name)
        aside = take_aside(path, take, PURGING, fsync)
        if aside is not None:
            aside.path.unlink()
        removed.append(summary)
    return removed
