"""Cluster mode's ingest sink: each request's events to JetStream, by partition, acked."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from forwarder.cluster.acks import AckedPublisher
from forwarder.cluster.wire import PartitionBatch, encode_batch, partition_of, subject_of
from forwarder.config import ClusterConfig
from forwarder.errors import IngestThrottled, scrub
from forwarder.ingest import amplitude
from forwarder.ingest.amplitude import Event


class PublishStats:
    """What ingest sent to JetStream: the counters /metrics shows."""

    def __init__(self) -> None:
        self.requests = 0
        self.messages = 0
        self.events = 0
        # Requests answered 429 because JetStream did not store them, by reason.
        self.failures: Counter[str] = Counter()


class ClusterIngest:
    """The EventSink of a cluster node: a request's events, grouped by partition (in the
    request's order), go to JetStream as one message per partition, all published at
    once; `accept` returns only when JetStream acknowledged every one of them (stored,
    replicated as the stream asks), and raises IngestThrottled (a 429) otherwise.

    A request refused part way may have some of its messages stored: the client sends it
    again, and those events come twice (insert_id dedupe drops repeats that carry one), as
    Amplitude's own at-least-once ingest does. Nothing answered 200 is missing.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        config: ClusterConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # `js` is the design's signature (node.py passes it); the acks come through
        # AckedPublisher on `nc`, so nothing here needs it.
        del js
        self._nc = nc
        self._publisher = AckedPublisher(nc)
        self._partitions = config.partitions
        self._prefix = config.subject_prefix
        self._timeout = config.publish_timeout_seconds
        self._clock = clock
        self.stats = PublishStats()

    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged (nor given up on)."""
        return self._publisher.waiting

    def refusal(self, count: int) -> str | None:
        if self._nc.is_closed:
            return "Cluster connection to NATS is closed: retry later"
        if not self._nc.is_connected:
            return "NATS is unreachable (reconnecting): retry later"
        return None

    async def accept(self, events: list[Event]) -> None:
        if not events:
            return
        partitions = self._partition_bodies(events)
        self.stats.requests += 1
        try:
            await self._publish_all(partitions)
        except TimeoutError:
            raise self._failed(
                "timeout",
                f"JetStream did not acknowledge within {self._timeout:g} s: retry later",
            ) from None
        except nats.js.errors.NoStreamResponseError:
            raise self._failed(
                "no_stream", f"no JetStream stream takes {self._prefix}.events.*: retry later"
            ) from None
        except nats.js.errors.APIError as error:
            # The stream's limits (discard=new), a lost quorum, a stream being restored.
            raise self._failed(
                "refused", f"JetStream refused the events ({_description(error)}): retry later"
            ) from None
        except nats.errors.Error as error:
            # Disconnected (no buffering, so nothing goes later), closed, draining.
            raise self._failed(
                "unreachable", f"NATS is unreachable ({type(error).__name__}): retry later"
            ) from None
        self.stats.messages += sum(len(bodies) for _, bodies in partitions)
        self.stats.events += len(events)

    def _partition_bodies(self, events: list[Event]) -> list[tuple[str, list[bytes]]]:
        """(subject, bodies) per partition, in first-seen order: one body, unless the
        partition's events would pass the server's max_payload (then consecutive ones)."""
        groups: dict[int, list[Event]] = {}
        for event in events:
            partition = partition_of(event.amplitude_user, self._partitions)
            groups.setdefault(partition, []).append(event)
        received_at = int(self._clock())
        limit = self._nc.max_payload
        return [
            (subject_of(self._prefix, partition), list(_bodies(received_at, group, limit)))
            for partition, group in groups.items()
        ]

    async def _publish_all(self, partitions: list[tuple[str, list[bytes]]]) -> None:
        """Publish every message at once, then wait for all the acks (one round trip)
        within the timeout; the first failure (in message order) is raised, and whatever
        is still unanswered then is given up on."""
        futures: list[asyncio.Future[int]] = []
        try:
            # In order on one connection: a partition's split messages keep theirs.
            for subject, bodies in partitions:
                for body in bodies:
                    futures.append(await self._publisher.publish(subject, body))
            _, pending = await asyncio.wait(
                futures, timeout=self._timeout, return_when=asyncio.FIRST_EXCEPTION
            )
        finally:
            for future in futures:
                future.cancel()
        for future in futures:
            error = future.exception() if future.done() and not future.cancelled() else None
            if error is not None:
                raise error
        if pending:
            raise TimeoutError

    def _failed(self, reason: str, message: str) -> IngestThrottled:
        self.stats.failures[reason] += 1
        return IngestThrottled(message)


def _bodies(received_at: int, events: list[Event], limit: int) -> Iterator[bytes]:
    """The encoded batches of `events`, each at most `limit` bytes, in order."""
    body = encode_batch(PartitionBatch(received_at, events))
    if len(body) <= limit:
        yield body
        return
    if len(events) == 1:
        raise amplitude.payload_too_large(
            f"An event is {len(body)} bytes encoded, more than NATS max_payload ({limit})"
        )
    half = len(events) // 2
    yield from _bodies(received_at, events[:half], limit)
    yield from _bodies(received_at, events[half:], limit)


def _description(error: nats.js.errors.APIError) -> str:
    text = error.description or f"code {error.code}, err_code {error.err_code}"
    return scrub(text)
