"""The [cluster] section (NATS JetStream and Redis shared by many nodes) and its checks."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import msgspec

from forwarder.config.section import Positive, Section, check_positive
from forwarder.errors import ConfigError

# JetStream's own bounds: a stream holds at most five replicas; past a thousand partitions
# each node holds a consumer and a lease per partition for no gain in parallelism.
MAX_PARTITIONS = 1024
MAX_REPLICAS = 5
# What NATS allows in a stream or KV bucket name (the lease and node buckets are named
# after the stream), and in a KV key (a node's name is one).
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NODE_NAME = re.compile(r"[A-Za-z0-9_=.-]+")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ClusterConfig(Section):
    """Cluster mode: present, many processes share a NATS JetStream log and a Redis."""

    # One server URL or a list of them (nats://host:4222): the client tries each in turn
    # and reconnects forever in the background.
    nats_url: str | list[str] = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # This process's name among the nodes; unique. A KV key, so no spaces or slashes.
    node: str = msgspec.field(default_factory=socket.gethostname)
    # Partitions of the event stream: a user's events all go to one, which one node owns
    # at a time. Fixed once the stream exists (a node that disagrees refuses to start).
    partitions: int = 64
    # The JetStream stream's name; its subjects are `<stream lower-cased>.events.<p>`.
    stream: str = "FORWARDER"
    # Copies JetStream keeps of the stream and the lease buckets (a NATS cluster's size).
    replicas: int = 1
    # The stream's cap; past it JetStream refuses new messages and ingest answers 429
    # (discard=new: nothing accepted is ever dropped to make room).
    max_stream_bytes: Positive[int] = 10_000_000_000
    # A partition's lease lives this long unless renewed: a dead node's partitions move
    # to others within about this many seconds.
    lease_seconds: Positive[float] = 6.0
    # Seconds ingest waits for JetStream to acknowledge a request's messages; past it the
    # request is answered 429 and the client sends it again.
    publish_timeout_seconds: Positive[float] = 5.0
    # Seconds a connect to NATS may take (each server of the list, each attempt).
    connect_timeout_seconds: Positive[float] = 2.0
    # Messages of one partition delivered and not yet acknowledged at most: bounds what
    # an owner holds in memory and what a failover sends again.
    max_ack_pending: Positive[int] = 1000

    @property
    def nats_servers(self) -> list[str]:
        return [self.nats_url] if isinstance(self.nats_url, str) else list(self.nats_url)

    @property
    def subject_prefix(self) -> str:
        """`forwarder` for the stream FORWARDER: subjects are `<prefix>.events.<p>`."""
        return self.stream.lower()


def check_cluster(cluster: ClusterConfig) -> None:
    servers = cluster.nats_servers
    if not servers:
        raise ConfigError("cluster.nats_url", "at least one NATS server URL is required")
    for i, url in enumerate(servers):
        at = "cluster.nats_url" if isinstance(cluster.nats_url, str) else f"cluster.nats_url[{i}]"
        _check_url(url, NATS_SCHEMES, at)
    _check_url(cluster.redis_url, REDIS_SCHEMES, "cluster.redis_url")
    if not _NODE_NAME.fullmatch(cluster.node):
        raise ConfigError(
            "cluster.node", f"use letters, digits, '-', '_', '=' or '.', got {cluster.node!r}"
        )
    if not 1 <= cluster.partitions <= MAX_PARTITIONS:
        raise ConfigError(
            "cluster.partitions", f"must be 1..{MAX_PARTITIONS}, got {cluster.partitions}"
        )
    if not _STREAM_NAME.fullmatch(cluster.stream):
        raise ConfigError(
            "cluster.stream", f"use letters, digits, '-' or '_', got {cluster.stream!r}"
        )
    if not 1 <= cluster.replicas <= MAX_REPLICAS:
        raise ConfigError("cluster.replicas", f"must be 1..{MAX_REPLICAS}, got {cluster.replicas}")
    check_positive(cluster, "cluster")
    if cluster.lease_seconds < 1:
        # Renewals go every lease_seconds / 3: shorter, a busy event loop loses leases.
        raise ConfigError(
            "cluster.lease_seconds", f"must be at least 1, got {cluster.lease_seconds}"
        )


def _check_url(url: str, schemes: tuple[str, ...], at: str) -> None:
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in schemes:
        expected = ", ".join(f"{name}://" for name in schemes)
        raise ConfigError(at, f"expected a URL starting with {expected}; got {no_secret(url)!r}")


def no_secret(url: str) -> str:
    """A server URL without its user and password, for printing."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
