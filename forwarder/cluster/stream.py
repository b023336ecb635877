"""The NATS connection, and the JetStream stream and KV buckets a cluster shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from forwarder.cluster.errors import ClusterUnavailable
from forwarder.config import ClusterConfig
from forwarder.errors import ForwarderError, scrub

log = logging.getLogger("forwarder.cluster")

# The stream's metadata key holding its partition count: subjects alone (`<prefix>.events.*`)
# don't say how many partitions the publishers spread users over.
PARTITIONS_KEY = "forwarder_partitions"
# Seconds between reconnect attempts to one server (the client cycles the list); NATS is
# back within this of its restart.
RECONNECT_WAIT_SECONDS = 0.5
# A server that stops answering (no RST: a cable, a frozen VM) is given up after this many
# unanswered pings this far apart, and the client reconnects.
PING_INTERVAL_SECONDS = 5
MAX_OUTSTANDING_PINGS = 2
# Seconds a daemon's start waits for a first connection before it gives up.
START_WAIT_SECONDS = 30.0
# Concurrent JetStream requests (API calls) give up after this long.
API_TIMEOUT_SECONDS = 5.0


class StreamMismatch(ForwarderError):
    """The stream or a bucket exists with settings this node's config disagrees with."""


def subjects_of(config: ClusterConfig) -> str:
    """The stream's subject filter: every partition's subject."""
    return f"{config.subject_prefix}.events.*"


def lease_bucket(config: ClusterConfig) -> str:
    """The KV bucket of partition leases: key `p.<n>`, value the owner's node name."""
    return f"{config.stream}_leases"


def node_bucket(config: ClusterConfig) -> str:
    """The KV bucket of live nodes: key the node name, value its JSON description."""
    return f"{config.stream}_nodes"


async def connect(
    config: ClusterConfig, wait_seconds: float = START_WAIT_SECONDS
) -> tuple[NATS, JetStreamContext]:
    """Connect to the first reachable server of `cluster.nats_url`; ClusterUnavailable if
    none answers within `wait_seconds`. Once connected the client reconnects forever in
    the background. It never buffers a publish while disconnected (pending_size=0): a
    request answered 429 then must not reach the stream later behind the client's back."""
    servers = config.nats_servers
    nc = NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=servers,
                name=config.node,
                connect_timeout=config.connect_timeout_seconds,  # type: ignore[arg-type]
                reconnect_time_wait=RECONNECT_WAIT_SECONDS,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                ping_interval=PING_INTERVAL_SECONDS,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                pending_size=0,
                error_cb=_connection_error,
                disconnected_cb=_on_disconnect(nc),
                reconnected_cb=_reconnected,
            ),
            wait_seconds,
        )
    except (TimeoutError, OSError, nats.errors.Error) as error:
        await _close_quietly(nc)
        shown = ", ".join(_server_names(servers))
        raise ClusterUnavailable(
            f"cluster.nats_url: no NATS server answered within {wait_seconds:g} s ({shown}): "
            f"{scrub(str(error)) or type(error).__name__}"
        ) from None
    # Each in-flight ingest publish holds one slot; the library's default (4,000) is
    # about 60 requests of 64 partitions.
    js = nc.jetstream(timeout=API_TIMEOUT_SECONDS, publish_async_max_pending=1 << 16)
    return nc, js


def _server_names(servers: list[str]) -> list[str]:
    return [server.rpartition("@")[2] for server in servers]


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # a half-made connection: nothing more to tell
        log.debug("closing a failed NATS connection", exc_info=True)


async def _connection_error(error: Exception) -> None:
    # Every failed reconnect attempt lands here: debug, as `disconnected` said it once.
    log.debug("NATS connection error: %s", scrub(str(error)) or type(error).__name__)


def _on_disconnect(nc: NATS) -> Callable[[], Awaitable[None]]:
    async def disconnected() -> None:
        if not nc.is_closed:  # a close of our own (a drain, a stop) is no news
            log.warning("disconnected from NATS: ingest answers 429 until it reconnects")

    return disconnected


async def _reconnected() -> None:
    log.info("reconnected to NATS")


def stream_config(config: ClusterConfig) -> js_api.StreamConfig:
    """The stream as this node would create it (design: a work queue, discard=new)."""
    return js_api.StreamConfig(
        name=config.stream,
        description=f"forwarder events in {config.partitions} partitions by Amplitude user",
        subjects=[subjects_of(config)],
        retention=js_api.RetentionPolicy.WORK_QUEUE,
        storage=js_api.StorageType.FILE,
        num_replicas=config.replicas,
        max_bytes=config.max_stream_bytes,
        discard=js_api.DiscardPolicy.NEW,
        metadata={PARTITIONS_KEY: str(config.partitions)},
    )


async def ensure_stream(js: JetStreamContext, config: ClusterConfig) -> js_api.StreamInfo:
    """Create the stream, or check the existing one: StreamMismatch, naming both sides,
    when its subjects, retention or partition count disagree with `config`. A different
    max_stream_bytes is applied (the cap is an operator's to raise)."""
    try:
        info = await _stream_info_or_create(js, config)
        mismatch = stream_mismatch(info.config, config)
        if mismatch is not None:
            raise StreamMismatch(mismatch)
        if info.config.max_bytes != config.max_stream_bytes:
            log.info(
                "stream %s: max_bytes %s -> %s (cluster.max_stream_bytes)",
                config.stream,
                info.config.max_bytes,
                config.max_stream_bytes,
            )
            info = await js.update_stream(info.config.evolve(max_bytes=config.max_stream_bytes))
    except (TimeoutError, nats.errors.Error) as error:
        raise ClusterUnavailable(f"stream {config.stream}: {_describe(error)}") from None
    return info


async def _stream_info_or_create(js: JetStreamContext, config: ClusterConfig) -> js_api.StreamInfo:
    try:
        return await js.stream_info(config.stream)
    except NotFoundError:
        pass
    try:
        return await js.add_stream(stream_config(config))
    except BadRequestError:
        # Another node created it between the two calls (with its own config): read it.
        return await js.stream_info(config.stream)


def stream_mismatch(found: js_api.StreamConfig, config: ClusterConfig) -> str | None:
    """Why an existing stream can't serve this config, naming both; None if it can."""
    name = config.stream
    wanted = [subjects_of(config)]
    if found.subjects != wanted:
        return f"stream {name} takes subjects {found.subjects}; this node publishes to {wanted}"
    if found.retention != js_api.RetentionPolicy.WORK_QUEUE:
        retention = getattr(found.retention, "value", found.retention)
        return f"stream {name} has {retention} retention; forwarder needs a workqueue stream"
    partitions = (found.metadata or {}).get(PARTITIONS_KEY)
    if partitions is None:
        return (
            f"stream {name} does not record its partition count ({PARTITIONS_KEY} metadata): "
            "it was not created by forwarder; choose another cluster.stream"
        )
    if partitions != str(config.partitions):
        return (
            f"stream {name} has {partitions} partitions, cluster.partitions is "
            f"{config.partitions}: the partition count is fixed once the stream exists "
            f"(set cluster.partitions = {partitions}, or drain and delete the stream)"
        )
    return None


async def ensure_buckets(js: JetStreamContext, config: ClusterConfig) -> tuple[KeyValue, KeyValue]:
    """The lease and node buckets (created if absent), entries living `lease_seconds`;
    StreamMismatch when one exists with another TTL (nodes disagree on lease_seconds)."""
    buckets = []
    for bucket in (lease_bucket(config), node_bucket(config)):
        try:
            buckets.append(await _ensure_bucket(js, bucket, config))
        except (TimeoutError, nats.errors.Error) as error:
            raise ClusterUnavailable(f"KV bucket {bucket}: {_describe(error)}") from None
    return buckets[0], buckets[1]


async def _ensure_bucket(js: JetStreamContext, bucket: str, config: ClusterConfig) -> KeyValue:
    try:
        return await js.create_key_value(
            js_api.KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=config.lease_seconds,
                storage=js_api.StorageType.FILE,
                replicas=config.replicas,
            )
        )
    except BadRequestError:
        pass  # it exists with another config: say which part differs
    kv = await js.key_value(bucket)
    ttl = (await kv.status()).ttl
    if ttl is not None and abs(ttl - config.lease_seconds) > 1e-3:
        raise StreamMismatch(
            f"KV bucket {bucket} keeps entries {ttl:g} s, cluster.lease_seconds is "
            f"{config.lease_seconds:g}: every node must use the same lease_seconds"
        )
    return kv


def _describe(error: BaseException) -> str:
    description = getattr(error, "description", None)
    text = description if isinstance(description, str) and description else str(error)
    return scrub(text) or type(error).__name__
