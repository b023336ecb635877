"""The shared part of a node's /status cluster section, read from NATS in the background.

/status must answer at once, so each partition's lag (its consumer's pending and
unacknowledged messages) is read every few seconds and the section shows the last read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from forwarder.cluster.consumer import consumer_name
from forwarder.cluster.leases import Ownership
from forwarder.cluster.status import cluster_section, lag_of
from forwarder.cluster.tasks import stop_task
from forwarder.config import ClusterConfig

log = logging.getLogger("forwarder.cluster")

# Seconds between reads of the partitions' lag.
REFRESH_SECONDS = 2.0
# Seconds one read of all consumers may take.
READ_TIMEOUT_SECONDS = 2.0


class StatusWatch:
    """Keeps the last read of every partition's lag; the section joins it with the
    ownership's view of nodes and owners (fresh at each call)."""

    def __init__(self, js: JetStreamContext, cluster: ClusterConfig, ownership: Ownership) -> None:
        self.js = js
        self.cluster = cluster
        self.ownership = ownership
        # Partition -> messages not yet acknowledged (pending + delivered unacknowledged);
        # absent while its consumer does not exist (no owner has taken it yet).
        self.lag: dict[int, int] = {}
        self.read_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-status")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.refresh(), READ_TIMEOUT_SECONDS)
            except (TimeoutError, nats.errors.Error, OSError) as error:
                log.debug("reading partition lag: %s", error)
            await asyncio.sleep(REFRESH_SECONDS)

    async def refresh(self) -> None:
        stream = self.cluster.stream
        infos = await asyncio.gather(
            *(
                self.js.consumer_info(stream, consumer_name(p))
                for p in range(self.cluster.partitions)
            ),
            return_exceptions=True,
        )
        lag: dict[int, int] = {}
        for partition, info in enumerate(infos):
            if isinstance(info, BaseException):
                continue
            lag[partition] = lag_of(info)
        self.lag = lag
        self.read_at = time.time()

    def section(self) -> dict[str, Any]:
        section = cluster_section(
            node=self.cluster.node,
            stream=self.cluster.stream,
            partitions=self.cluster.partitions,
            nodes=self.ownership.nodes(),
            owners=self.ownership.owners(),
            lags=self.lag,
        )
        section["lag_read_at"] = self.read_at
        return section
