"""The config document's root, and its [server] and [storage] sections."""

from __future__ import annotations

from typing import Literal

import msgspec

from forwarder.config.cluster import ClusterConfig
from forwarder.config.section import Positive, Section
from forwarder.config.sync import SyncConfig
from forwarder.ingest.cors import ANY_ORIGIN

# The smallest dead-letter cap: a few letters (about 1 KB each).
MIN_DEAD_LETTER_BYTES = 4096

# Amplitude takes 2,000 events a request; far more would make one request's memory huge.
MAX_EVENTS_PER_REQUEST_CEILING = 100_000


class ServerConfig(Section):
    listen: str = "127.0.0.1:8080"
    # HOST:PORT for /metrics, /status and the operator routes: off the public ingest port,
    # which browsers reach, as Vector (8686) and Fluent Bit (2020) keep theirs.
    admin_listen: str = "127.0.0.1:9180"
    api_keys: list[str] = []
    max_body_bytes: Positive[int] = 20_000_000
    # Amplitude's HTTP V2 API takes at most 2000 events per request (413 past it; the SDKs
    # split and retry).
    max_events_per_request: Positive[int] = 2000
    # Seconds a drain waits for in-flight work on SIGTERM before leaving the rest queued.
    drain_timeout_seconds: Positive[float] = 20.0
    # Seconds the HTTP server gives open connections to finish once the drain is over.
    shutdown_timeout_seconds: Positive[float] = 5.0
    # Seconds a client has to send a request's headers, from connecting (or from the first
    # byte of its next request): a trickling client otherwise holds a socket for an hour.
    header_timeout_seconds: Positive[float] = 10.0
    # Seconds a kept-alive connection may sit idle between requests (nginx's default: 75).
    idle_timeout_seconds: Positive[float] = 75.0
    # Open client connections at most. Past it a new one replaces the oldest waiting for a
    # request; 503 when all are busy. The open-file limit is raised to fit it at start.
    max_connections: Positive[int] = 4096
    # Web page origins (scheme://host[:port]) whose browsers may call the ingest routes.
    # "*" lets any page send, as Amplitude's own endpoints do: the API key, not the
    # page, is what admits data. A list of origins narrows it; [] allows none.
    allowed_origins: list[str] = msgspec.field(default_factory=lambda: [ANY_ORIGIN])

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def admin_host(self) -> str:
        return self.admin_listen.rsplit(":", 1)[0].strip("[]")

    @property
    def admin_port(self) -> int:
        return int(self.admin_listen.rsplit(":", 1)[1])


class StorageConfig(Section):
    path: str = "var"
    durability: Literal["journal", "memory"] = "journal"
    # Profiles kept in memory: in front of SQLite (journal), or all of them (memory mode,
    # where the least recently used past it is forgotten).
    profile_cache_size: Positive[int] = 100_000
    # Largest profile (its msgpack bytes) a change may make; past it the change is refused
    # and counted, as Amplitude caps user properties (1,000 of them, 1,024 chars each).
    max_profile_bytes: Positive[int] = 1_048_576
    # Journal disk cap; past it ingest answers 429.
    journal_max_bytes: Positive[int] = 2_000_000_000
    # A journal segment is closed and a new one started past this size; whole segments
    # below the checkpoint are deleted.
    journal_segment_bytes: Positive[int] = 64 * 1024 * 1024
    # How often the checkpoint is saved: profiles flushed to SQLite, then the journal
    # position they and delivery allow. Replay after a crash starts from it.
    checkpoint_interval_seconds: Positive[float] = 0.5
    # How often changed profiles are written to SQLite between checkpoints.
    profile_flush_seconds: Positive[float] = 0.2
    # Amplitude ignores an event whose insert_id its device (or user) already sent within
    # 7 days: a repeat is answered 200 and applies nothing.
    dedupe_window_seconds: Positive[int] = 7 * 24 * 3600
    # insert_ids remembered at most (154 bytes each in memory, measured: 150 MB at the
    # default; as many rows on disk). Past it the oldest are forgotten before their 7 days,
    # and a repeat of one is applied again. SDK retries come within minutes, so the window
    # that matters is covered: a million events back.
    dedupe_max_entries: Positive[int] = 1_000_000
    # Bytes each sync's dead-letter file may hold. Past it no letter is dropped: new dead
    # items wait unacknowledged (the journal keeps them, then ingest answers 429) until an
    # operator replays or purges. 1 GB is about a million letters: far more than a day of
    # a bad mapping, and well short of filling the disk the journal needs.
    dead_letter_max_bytes: Positive[int] = 1_000_000_000


class Config(Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    syncs: list[SyncConfig] = []
    # None: embedded mode (the journal on this host), the default.
    cluster: ClusterConfig | None = None
