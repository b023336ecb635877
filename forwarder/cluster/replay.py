"""`forwarder dead-letters replay` in cluster mode: this process resends the chosen letters
from Redis under the rate budget every node shares.

Per sync, the chosen letters move to this replay's aside stream (one script: each is in
the sync's stream or the aside, never both or neither), go out through a SyncDelivery
whose rate budget is the cluster's RedisRateBudget (so the replay and the running nodes
together keep to Iterable's limit, wherever it runs) and whose dead letters are the
sync's stream (a letter failing again is written back there, with its first_failed_at).
Each settled letter leaves the aside; what has not settled at the end (the timeout,
Ctrl-C, SIGTERM) is put back. A replay killed outright leaves its aside to the heartbeat
(`replay_aside.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.clients import redis_client
from forwarder.cluster.dead_letters import RedisDeadLetters, cluster_dead_letters
from forwarder.cluster.errors import ClusterUnavailable
from forwarder.cluster.rate import RedisRateBudget
from forwarder.cluster.replay_aside import Heartbeat, new_aside, restore_expired
from forwarder.cluster.replay_job import FORGET_SECONDS, ClusterSyncReplay
from forwarder.config import Config, SyncConfig
from forwarder.deliver.letter_query import chosen_syncs
from forwarder.deliver.letter_select import LetterFilter
from forwarder.deliver.replay import PROGRESS_SECONDS, ReplayResult
from forwarder.deliver.replay_job import ReplayProgress, progress_line
from forwarder.deliver.sync import SyncDelivery
from forwarder.store.dead_letters import DeadLetter, letter_id

log = logging.getLogger("forwarder.replay")


async def replay_in_cluster(
    config: Config,
    sync_name: str | None,
    timeout: float,
    chosen: LetterFilter,
    report: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> list[ReplayResult]:
    """Resend the chosen letters of each enabled sync (or the one named) until done,
    `timeout` or `stop`; what fails again is dead-lettered again, what is not settled
    goes back. KeyError for a sync the config does not name."""
    assert config.cluster is not None, "a cluster replay needs a [cluster] config"
    syncs = [sync for sync in chosen_syncs(config, sync_name) if sync.enabled]
    stop = stop or asyncio.Event()
    deadline = time.monotonic() + timeout
    results = []
    async with redis_client(config.cluster.redis_url) as redis:
        await restore_expired(config, redis)
        # The same rules as every node's budget: all enabled syncs, so keys they share
        # are paced at the lowest rate any of them configures.
        rate = RedisRateBudget(redis, [sync for sync in config.syncs if sync.enabled])
        for sync in syncs:
            left = 0.0 if stop.is_set() else max(0.0, deadline - time.monotonic())
            job = SyncReplayRun(config, redis, rate, sync, chosen, report)
            results.append(await job.run(left, stop))
    return results


class SyncReplayRun:
    """One sync's replay from start to end: move aside, send, then forget or put back."""

    def __init__(
        self,
        config: Config,
        redis: Redis,
        rate: RedisRateBudget,
        sync: SyncConfig,
        chosen: LetterFilter,
        report: Callable[[str], None] | None,
    ) -> None:
        self.redis = redis
        self.rate = rate
        self.sync = sync
        self.chosen = chosen
        self.report = report
        self.letters: RedisDeadLetters = cluster_dead_letters(config, redis, sync.name)
        self.aside = new_aside(config, sync.name)

    async def run(self, timeout: float, stop: asyncio.Event) -> ReplayResult:
        await self.letters.refresh()
        heartbeat = Heartbeat(self.redis, self.aside.heartbeat)
        await heartbeat.start()
        try:
            by_kind = await self._move_aside()
            if not by_kind:
                return ReplayResult(self.sync.name)
            return await self._send(by_kind, timeout, stop)
        finally:
            await heartbeat.stop()
            with contextlib.suppress(RedisError, OSError):  # else it runs out by itself
                await self.redis.delete(self.aside.heartbeat)

    async def _move_aside(self) -> Counter[str]:
        picked = [
            stored
            async for stored in self.letters.read()
            if isinstance(stored.letter, DeadLetter)
            and self.chosen.matches(stored.letter, letter_id(stored.line))
        ]
        moved = await self.letters.move_aside(picked, self.aside.stream)
        return Counter(s.letter.label for s in moved if isinstance(s.letter, DeadLetter))

    async def _send(
        self, by_kind: Counter[str], timeout: float, stop: asyncio.Event
    ) -> ReplayResult:
        # Nothing to acknowledge: the letters came from Redis, not from the event stream.
        delivery = SyncDelivery(self.sync, self.rate, self.letters, acknowledge=lambda s, n: None)
        job = ClusterSyncReplay(delivery, self.redis, self.aside, by_kind)
        await delivery.start()
        tasks = [
            asyncio.create_task(job.run(), name=f"replay {self.sync.name}"),
            asyncio.create_task(job.forget_every(FORGET_SECONDS)),
        ]
        if self.report is not None:
            tasks.append(asyncio.create_task(_report_every(job.progress, self.report)))
        ended = [asyncio.create_task(job.done.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(ended, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, *ended]:
                task.cancel()
            await asyncio.gather(*tasks, *ended, return_exceptions=True)
            # In flight or queued now: not settled, so it goes back below.
            await delivery.stop()
            put_back = await self._end(job)
        if self.report is not None:
            self.report(progress_line([job.progress]))
        p = job.progress
        left = max(0, put_back - p.unsendable)
        return ReplayResult(self.sync.name, p.resent, p.delivered, p.dead_again, left, p.unsendable)

    async def _end(self, job: ClusterSyncReplay) -> int:
        """Forget what settled and put the rest back; how many went back. With Redis out
        of reach the aside stays, and the next reader puts it back once the heartbeat
        runs out."""
        try:
            await job.forget_settled()
            moved = await self.letters.put_back(
                self.aside.stream, self.aside.heartbeat, only_if_expired=False
            )
        except ClusterUnavailable as error:
            log.error(
                "replay of %s: letters left in %s: %s", self.sync.name, self.aside.stream, error
            )
            return job.progress.total - job.progress.delivered - job.progress.dead_again
        return moved or 0


async def _report_every(progress: ReplayProgress, report: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        report(progress_line([progress]))


def run_cluster_replay(
    config: Config,
    sync_name: str | None,
    timeout: float,
    chosen: LetterFilter,
    report: Callable[[str], None],
) -> list[ReplayResult]:
    """The CLI's replay: Ctrl-C or SIGTERM ends it as the timeout does (the letters not
    settled go back), and the counts are still printed."""

    async def main() -> list[ReplayResult]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            return await replay_in_cluster(config, sync_name, timeout, chosen, report, stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(signum)

    return asyncio.run(main())
