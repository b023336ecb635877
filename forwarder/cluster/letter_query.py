"""`forwarder dead-letters list|show|purge` in cluster mode: the letters in Redis.

Each first puts back the letters of a replay that died (`replay_aside.restore_expired`),
so what it shows or purges is every letter there is.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.clients import redis_client
from forwarder.cluster.dead_letters import (
    DeadLetterStoreUnavailable,
    StoredLetter,
    cluster_dead_letters,
)
from forwarder.cluster.replay_aside import restore_expired
from forwarder.config import Config
from forwarder.deliver.letter_select import LetterFilter, SyncSummary
from forwarder.store.dead_letters import DeadLetter, letter_id


def _redis_url(config: Config) -> str:
    assert config.cluster is not None, "cluster letter queries need a [cluster] config"
    return config.cluster.redis_url


async def letter_streams(config: Config, redis: Redis, sync_name: str | None) -> list[str]:
    """The syncs whose letters to read: the configured ones (or the one named), and any
    other sync with letters in Redis (one a reload removed); KeyError when the named one
    is neither."""
    names = [s.name for s in config.syncs if sync_name is None or s.name == sync_name]
    prefix = cluster_dead_letters(config, redis, "-").key.removesuffix("-")
    try:
        found = [key async for key in redis.scan_iter(match=f"{prefix}*", _type="stream")]
    except (RedisError, OSError) as error:
        raise DeadLetterStoreUnavailable(
            f"dead letters in Redis: {type(error).__name__}: {error}"
        ) from error
    for key in sorted(k.decode() if isinstance(k, bytes) else str(k) for k in found):
        name = key.removeprefix(prefix)
        if name not in names and (sync_name is None or name == sync_name):
            names.append(name)
    if sync_name is not None and not names:
        raise KeyError(sync_name)
    return names


async def summarize(
    config: Config, sync_name: str | None, chosen: LetterFilter
) -> list[SyncSummary]:
    summaries = []
    async with redis_client(_redis_url(config)) as redis:
        await restore_expired(config, redis)
        for name in await letter_streams(config, redis, sync_name):
            summary = SyncSummary(name)
            async for stored in cluster_dead_letters(config, redis, name).read():
                if not isinstance(stored.letter, DeadLetter):
                    summary.unreadable += 1
                elif chosen.matches(stored.letter, letter_id(stored.line)):
                    summary.add(stored.letter)
            summaries.append(summary)
    return summaries


async def matching(
    config: Config, sync_name: str | None, chosen: LetterFilter
) -> list[tuple[str, DeadLetter]]:
    """Each matching letter with its id, stream by stream, oldest first."""
    found = []
    async with redis_client(_redis_url(config)) as redis:
        await restore_expired(config, redis)
        for name in await letter_streams(config, redis, sync_name):
            async for stored in cluster_dead_letters(config, redis, name).read():
                if isinstance(stored.letter, DeadLetter):
                    ident = letter_id(stored.line)
                    if chosen.matches(stored.letter, ident):
                        found.append((ident, stored.letter))
    return found


async def purge(config: Config, sync_name: str | None, chosen: LetterFilter) -> list[SyncSummary]:
    """Remove the matching letters; per sync, what was removed (a letter another purge
    removed first is counted there, not here)."""

    def pick(stored: StoredLetter) -> bool:
        assert isinstance(stored.letter, DeadLetter)
        return chosen.matches(stored.letter, letter_id(stored.line))

    removed = []
    async with redis_client(_redis_url(config)) as redis:
        await restore_expired(config, redis)
        for name in await letter_streams(config, redis, sync_name):
            summary = SyncSummary(name)
            for stored in await cluster_dead_letters(config, redis, name).take(pick):
                assert isinstance(stored.letter, DeadLetter)
                summary.add(stored.letter)
            removed.append(summary)
    return removed
