"""A cluster replay's aside stream: its keys, its heartbeat, and putting back the letters a
replay that died (kill -9, a lost host) left there.

A replay moves the letters it resends out of the sync's stream into a stream of its own
(`<prefix>:dead-aside:<sync>:<replay id>`), beside a heartbeat key with a TTL that it
renews while it runs. Whoever reads dead letters next (any `forwarder dead-letters`
command in cluster mode, a node at start) puts back every aside whose heartbeat has run
out: a letter may then come back after it was delivered (at worst twice), never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.dead_letters import DeadLetterStoreUnavailable, cluster_dead_letters
from forwarder.cluster.tasks import stop_task
from forwarder.config import Config

log = logging.getLogger("forwarder.replay")

# A replay silent this long is taken for dead and its letters are put back: long enough
# for a Redis failover or a busy event loop, short enough that letters are not hidden
# from the operator for long.
HEARTBEAT_SECONDS = 30
# Three renewals per TTL, so one or two lost to a Redis hiccup do not expire it.
RENEW_SECONDS = 10.0


@dataclass(frozen=True)
class AsideKeys:
    """One replay's aside stream for one sync, and the heartbeat that says it is alive."""

    sync: str
    stream: str

    @property
    def heartbeat(self) -> str:
        return f"{self.stream}:alive"


def aside_prefix(config: Config) -> str:
    """Where asides live: beside the sync streams (`<prefix>:dead:<sync>`) but outside
    their pattern, so listing letters never takes an aside for a sync."""
    assert config.cluster is not None, "asides need a [cluster] config"
    return f"{config.cluster.subject_prefix}:dead-aside:"


def new_aside(config: Config, sync: str) -> AsideKeys:
    # Sync names have no ':' (check_config), so the key parses back to its sync.
    replay_id = f"{int(time.time())}-{secrets.token_hex(4)}"
    return AsideKeys(sync, f"{aside_prefix(config)}{sync}:{replay_id}")


def parse_aside(config: Config, key: str) -> AsideKeys | None:
    rest = key.removeprefix(aside_prefix(config))
    sync, _, replay_id = rest.partition(":")
    if rest == key or not sync or not replay_id:
        return None
    return AsideKeys(sync, key)


class Heartbeat:
    """Keeps an aside's heartbeat key alive while its replay runs."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Set the key before any letter moves, so nobody puts back a live replay's aside."""
        await self._beat()
        self._task = asyncio.create_task(self._renew(), name=f"heartbeat {self.key}")

    async def _beat(self) -> None:
        owner = f"pid {os.getpid()} on {socket.gethostname()}"
        try:
            await self.redis.set(self.key, owner, ex=HEARTBEAT_SECONDS)
        except (RedisError, OSError) as error:
            raise DeadLetterStoreUnavailable(
                f"replay heartbeat in Redis: {type(error).__name__}: {error}"
            ) from error

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self._beat()
            except DeadLetterStoreUnavailable as error:
                # Still running: the next beat may get through before the TTL runs out.
                log.warning("%s", error)

    async def stop(self) -> None:
        """Stop renewing; the key goes with the emptied aside (or runs out with it)."""
        task, self._task = self._task, None
        await stop_task(task)


async def restore_expired(config: Config, redis: Redis) -> int:
    """Put back the letters of every aside whose heartbeat ran out; how many."""
    try:
        keys = [
            key.decode() if isinstance(key, bytes) else str(key)
            async for key in redis.scan_iter(match=f"{aside_prefix(config)}*", _type="stream")
        ]
    except (RedisError, OSError) as error:
        raise DeadLetterStoreUnavailable(
            f"dead letters in Redis: {type(error).__name__}: {error}"
        ) from error
    restored = 0
    for key in sorted(keys):
        aside = parse_aside(config, key)
        if aside is None:
            continue
        letters = cluster_dead_letters(config, redis, aside.sync)
        # Checked in the same script that moves them: a replay renewing meanwhile keeps them.
        moved = await letters.put_back(aside.stream, aside.heartbeat, only_if_expired=True)
        if moved:
            restored += moved
            log.warning(
                "put back %d dead letter(s) that a stopped replay had moved aside (%s)",
                moved,
                key,
            )
    return restored
