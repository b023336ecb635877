"""GET /metrics: the daemon's counters in Prometheus text format, read at scrape time.

The hot path only bumps plain ints and Counters; this collector turns them into metric
families when Prometheus scrapes, so no per-event cost comes from the client library.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from forwarder import __version__
from forwarder.deliver.stats import LATENCY_BUCKETS, LatencyHistogram
from forwarder.ingest.app import IngestState
from forwarder.ops.snapshot import Snapshot
from forwarder.store.log import LogStats

_SYNC = ("sync",)
_ENDPOINT = ("sync", "endpoint")
_REASON = ("sync", "reason")
_STATUS = ("sync", "endpoint", "status")

# The per-sync families as (name, help, label names); `_syncs` unpacks each table in
# this order, so a row and the variable it lands in must move together.
_SYNC_COUNTERS = (
    ("forwarder_sync_items_forwarded", "Items Iterable accepted, by endpoint", _ENDPOINT),
    ("forwarder_sync_items_routed", "Items routed to a sync, by kind", ("sync", "kind")),
    ("forwarder_sync_events_skipped", "Events a sync did not send, by reason", _REASON),
    ("forwarder_sync_dead_letters", "Items dead-lettered, by reason", _REASON),
    ("forwarder_sync_retries", "Items retried, by endpoint", _ENDPOINT),
    ("forwarder_sync_iterable_responses", "Iterable answers, by endpoint and status", _STATUS),
    ("forwarder_sync_iterable_requests", "Requests sent to Iterable", _ENDPOINT),
    ("forwarder_sync_items_sent", "Items carried by requests to Iterable (retries too)", _ENDPOINT),
    (
        "forwarder_sync_mapped_values_dropped",
        "Mapped values left out of items sent (campaignId/templateId not a positive integer)",
        ("sync", "field"),
    ),
)
_SYNC_GAUGES = (
    ("forwarder_sync_batch_fill_ratio", "Mean items per request over the item cap", _ENDPOINT),
    ("forwarder_sync_queue_items", "Items queued", _SYNC),
    ("forwarder_sync_queue_bytes", "Bytes queued", _SYNC),
    ("forwarder_sync_queue_max_items", "Items queued at most (then ingest answers 429)", _SYNC),
    ("forwarder_sync_queue_max_bytes", "Bytes queued at most (then ingest answers 429)", _SYNC),
    ("forwarder_sync_requests_in_flight", "Requests to Iterable in flight", _SYNC),
    ("forwarder_sync_paused", "1 while the sync is paused (refused key or URL, outage)", _SYNC),
    (
        "forwarder_sync_dead_letters_unwritten",
        "Dead letters the disk refused so far; their items stay in the journal",
        _SYNC,
    ),
)

_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _families(
    kind: type[_Family], table: Iterable[tuple[str, str, Sequence[str]]]
) -> Iterator[_Family]:
    """Empty families of one kind, one per (name, help, label names) row."""
    return (kind(name, help_text, labels=labels) for name, help_text, labels in table)


class ForwarderCollector:
    def __init__(self, snapshot: Callable[[], Snapshot], ingest: IngestState) -> None:
        self.snapshot = snapshot
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        build = GaugeMetricFamily(
            "forwarder_build_info",
            "Always 1: the running forwarder's version and Python",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        ingest = self.ingest
        yield _single(
            GaugeMetricFamily,
            "forwarder_ready",
            "1 while /readyz answers 200 (recovered, not draining, storage takes writes)",
            1 if ingest.ready and ingest.accepting and ingest.storage_fault() is None else 0,
        )
        yield from self._ingest()
        yield _single(
            CounterMetricFamily,
            "forwarder_profile_changes_refused",
            "Profile changes refused: the profile would pass storage.max_profile_bytes",
            snapshot.profile_changes_refused,
        )
        yield from self._syncs(snapshot)
        yield from _config(snapshot)
        if snapshot.cluster is not None:
            yield from _cluster(snapshot.cluster)
        if snapshot.log is not None:
            yield from self._journal(snapshot.log)
            yield _single(
                GaugeMetricFamily,
                "forwarder_journal_max_bytes",
                "storage.journal_max_bytes: past it, ingest answers 429",
                snapshot.journal_max_bytes,
            )
            yield _single(
                GaugeMetricFamily,
                "forwarder_storage_unavailable",
                "1 while storage takes no writes (ingest answers 503, /readyz is off)",
                0 if snapshot.storage_fault is None else 1,
            )

    def _ingest(self) -> Iterator[Metric]:
        ingest = self.ingest
        requests = CounterMetricFamily(
            "forwarder_http_requests",
            "HTTP requests answered, by route and status",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(ingest.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        events = CounterMetricFamily(
            "forwarder_events",
            "Events received by the ingest routes, by outcome",
            labels=["outcome"],
        )
        events.add_metric(["accepted"], ingest.events_accepted)
        events.add_metric(["throttled"], ingest.events_throttled)
        yield events
        rejected = CounterMetricFamily(
            "forwarder_requests_rejected", "Ingest requests refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(ingest.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        latency = HistogramMetricFamily(
            "forwarder_http_request_duration_seconds",
            "Ingest port requests, headers read to answer (a 200 waits for the journal)",
            labels=["route"],
        )
        for route, histogram in sorted(ingest.latency.items()):
            latency.add_metric([route], _buckets(histogram), histogram.total)
        yield latency

    def _syncs(self, snapshot: Snapshot) -> Iterator[Metric]:
        forwarded, routed, skipped, dead, retries, responses, requests, items_sent, dropped = (
            _families(CounterMetricFamily, _SYNC_COUNTERS)
        )
        fill, depth, depth_bytes, depth_cap, bytes_cap, in_flight, paused, unwritten = _families(
            GaugeMetricFamily, _SYNC_GAUGES
        )
        latency = HistogramMetricFamily(
            "forwarder_sync_upstream_latency_seconds", "Iterable request latency", labels=_ENDPOINT
        )
        for sync in snapshot.syncs:
            name = sync.name
            stats = sync.delivery
            routed.add_metric([name, "event"], sync.route.events_routed)
            routed.add_metric([name, "user"], sync.route.users_routed)
            routed.add_metric([name, "email_change"], sync.route.email_changes_routed)
            for field_name, count in sorted(sync.route.dropped.items()):
                dropped.add_metric([name, field_name], count)
            for reason, count in sorted(sync.route.skipped.items()):
                skipped.add_metric([name, reason], count)
            for kind, count in sorted(stats.dead.items(), key=lambda pair: pair[0].value):
                dead.add_metric([name, kind.value], count)
            for (path, status), count in sorted(stats.responses.items()):
                responses.add_metric([name, path, status], count)
            for endpoint, caps in sync.caps.items():
                e = endpoint.value
                forwarded.add_metric([name, e], stats.delivered[e])
                retries.add_metric([name, e], stats.retries[e])
                requests.add_metric([name, e], stats.requests[e])
                items_sent.add_metric([name, e], stats.items_sent[e])
                sent = stats.requests[e]
                fill.add_metric(
                    [name, e], stats.items_sent[e] / sent / caps.max_items if sent else 0.0
                )
                histogram = stats.latency.get(e)
                if histogram is not None:
                    latency.add_metric([name, e], _buckets(histogram), histogram.total)
            depth.add_metric([name], sync.queued_items)
            depth_bytes.add_metric([name], sync.queued_bytes)
            depth_cap.add_metric([name], sync.max_queued_items)
            bytes_cap.add_metric([name], sync.max_queued_bytes)
            in_flight.add_metric([name], stats.in_flight)
            paused.add_metric([name], 1 if sync.paused else 0)
            unwritten.add_metric([name], stats.dead_letters_unwritten)
        yield from (
            forwarded,
            routed,
            skipped,
            dead,
            retries,
            responses,
            requests,
            items_sent,
            dropped,
        )
        yield from (fill, latency, depth, depth_bytes, depth_cap, bytes_cap, in_flight, paused)
        yield unwritten
        letter_bytes = GaugeMetricFamily(
            "forwarder_dead_letter_bytes", "Bytes of the sync's dead-letter file", labels=_SYNC
        )
        for sync in snapshot.syncs:
            letter_bytes.add_metric([sync.name], sync.dead_letter_bytes)
        yield letter_bytes
        budget_waits = CounterMetricFamily(
            "forwarder_sync_rate_budget_waits",
            "Turns the shared rate budget (Redis) could not give: the batch waited",
            labels=_ENDPOINT,
        )
        for sync in snapshot.syncs:
            for path, count in sorted(sync.delivery.budget_waits.items()):
                budget_waits.add_metric([sync.name, path], count)
        yield budget_waits

    def _journal(self, journal: LogStats) -> Iterator[Metric]:
        yield _single(
            GaugeMetricFamily,
            "forwarder_journal_bytes",
            "Journal bytes on disk",
            journal.disk_bytes,
        )
        yield _single(
            GaugeMetricFamily,
            "forwarder_journal_lag_records",
            "Journal records accepted but not yet fully delivered (delivery lag)",
            journal.last_seq - journal.checkpoint,
        )
        yield _single(
            CounterMetricFamily, "forwarder_journal_commits", "Group-commit fsyncs", journal.commits
        )
        yield _single(
            CounterMetricFamily,
            "forwarder_journal_write_failures",
            "Group writes that failed (disk full, I/O error), were cut back and answered 503",
            journal.write_failures,
        )
        yield _single(
            GaugeMetricFamily,
            "forwarder_journal_recovery_skipped_bytes",
            "Damaged journal bytes the last recovery skipped (copied to storage.path/damaged)",
            journal.recovery_skipped_bytes,
        )


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """A histogram's per-bucket counts as Prometheus's cumulative (le, count) pairs."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), histogram.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
    return buckets


def _config(snapshot: Snapshot) -> Iterator[Metric]:
    """The config reloads (SIGHUP), and items recovery dead-lettered for removed syncs."""
    config = snapshot.config
    if config is not None:
        reloads = CounterMetricFamily(
            "forwarder_config_reloads", "Config reloads (SIGHUP), by result", labels=["result"]
        )
        reloads.add_metric(["ok"], config.reloads)
        reloads.add_metric(["refused"], config.refused)
        yield reloads
        yield _single(
            GaugeMetricFamily,
            "forwarder_config_loaded_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
            config.loaded_at,
        )
    orphans = CounterMetricFamily(
        "forwarder_recovery_sync_removed_dead_letters",
        "Journal items of syncs no longer configured, dead-lettered at start (sync_removed)",
        labels=_SYNC,
    )
    for name, count in sorted(snapshot.unconfigured_dead_letters.items()):
        orphans.add_metric([name], count)
    yield orphans


def _single(kind: type[_Family], name: str, help_text: str, value: float) -> _Family:
    """A family of one unlabelled sample."""
    family = kind(name, help_text)
    family.add_metric([], value)
    return family


def metrics_handler(snapshot: Callable[[], Snapshot], ingest: IngestState) -> Handler:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ForwarderCollector(snapshot, ingest))
    # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
    ProcessCollector(registry=registry)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    return metrics


def _cluster(section: dict[str, Any]) -> Iterator[Metric]:
    """Cluster mode: this node's partitions and messages, and each partition's lag."""
    mine = section.get("this_node", {})
    yield _single(
        GaugeMetricFamily,
        "forwarder_cluster_partitions_owned",
        "Partitions this node delivers now",
        len(mine.get("owned_partitions", [])),
    )
    yield _single(
        CounterMetricFamily,
        "forwarder_cluster_messages_acknowledged",
        "Stream messages this node acknowledged (items settled, profiles stored)",
        mine.get("messages_acknowledged", 0),
    )
    yield _single(
        GaugeMetricFamily,
        "forwarder_cluster_messages_unacknowledged",
        "Stream messages this node fetched and has not acknowledged yet",
        mine.get("messages_unacknowledged", 0),
    )
    lag = GaugeMetricFamily(
        "forwarder_cluster_partition_lag",
        "Messages of a partition not yet acknowledged (as last read from NATS)",
        labels=["partition"],
    )
    for row in section.get("partitions", []):
        if row.get("lag") is not None:
            lag.add_metric([str(row["partition"])], row["lag"])
    yield lag
    failures = CounterMetricFamily(
        "forwarder_cluster_ingest_failures",
        "Requests answered 429 because JetStream did not store them, by reason",
        labels=["reason"],
    )
    for reason, count in sorted(mine.get("ingest", {}).get("failures", {}).items()):
        failures.add_metric([reason], count)
    yield failures
