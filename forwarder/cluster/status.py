"""The cluster's state as /status and `forwarder cluster status` show it: nodes, owners, lag."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import BucketNotFoundError, NotFoundError

from forwarder.cluster.buckets import NodeAdvert, read_leases, read_nodes
from forwarder.cluster.stream import lease_bucket, node_bucket, subjects_of
from forwarder.config import ClusterConfig


def lag_of(info: ConsumerInfo) -> int:
    """Messages of a partition not yet acknowledged: waiting, or delivered and in work."""
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


def cluster_section(
    *,
    node: str | None,
    stream: str,
    partitions: int,
    nodes: Mapping[str, NodeAdvert],
    owners: Mapping[int, str],
    lags: Mapping[int, int],
) -> dict[str, Any]:
    """The cluster section: `node` is the node answering (None from the command line),
    `owners` the holder of each leased partition, `lags` each partition's unacknowledged
    messages where known. A partition without an owner is listed in `unowned`; one
    owned by a node missing from `nodes` shows that node all the same (its lease has not
    run out yet: it is dying, or joining)."""
    counts: dict[str, int] = {}
    for owner in owners.values():
        counts[owner] = counts.get(owner, 0) + 1
    return {
        "node": node,
        "stream": stream,
        "nodes_alive": len(nodes),
        "nodes": {
            name: {
                "started_at": advert.started_at,
                "admin_listen": advert.admin_listen,
                "version": advert.version,
                "partitions_owned": counts.get(name, 0),
            }
            for name, advert in sorted(nodes.items())
        },
        "partitions_total": partitions,
        "unowned": [p for p in range(partitions) if p not in owners],
        "lag_total": sum(lags.get(p, 0) for p in range(partitions)),
        "partitions": [
            {"partition": p, "owner": owners.get(p), "lag": lags.get(p)} for p in range(partitions)
        ],
    }


def render_table(section: Mapping[str, Any]) -> str:
    """The section as `forwarder cluster status` prints it: a summary line, the nodes,
    then one row per partition."""
    partitions = section["partitions"]
    unowned = section["unowned"]
    lines = [
        f"stream {section['stream']}: {section['nodes_alive']} node(s) alive, "
        f"{len(partitions)} partitions ({len(partitions) - len(unowned)} owned), "
        f"lag {section['lag_total']} message(s)",
        "",
        f"{'NODE':<24} {'PARTITIONS':>10}  {'ADMIN':<22} {'VERSION':<10} STARTED",
    ]
    for name, node in section["nodes"].items():
        started = datetime.datetime.fromtimestamp(node["started_at"], datetime.UTC)
        lines.append(
            f"{name:<24} {node['partitions_owned']:>10}  {node['admin_listen'] or '-':<22} "
            f"{node['version']:<10} {started:%Y-%m-%d %H:%M:%S}Z"
        )
    lines += ["", f"{'PARTITION':>9}  {'OWNER':<24} {'LAG':>10}"]
    for row in partitions:
        lag = "-" if row["lag"] is None else str(row["lag"])
        lines.append(f"{row['partition']:>9}  {row['owner'] or '(none)':<24} {lag:>10}")
    return "\n".join(lines)


async def read_cluster(js: JetStreamContext, config: ClusterConfig) -> dict[str, Any]:
    """Read the cluster section from NATS itself (no node needs to run). NotFoundError
    when the stream does not exist yet. A partition's lag is its consumer's; with no
    consumer (never owned yet), the messages its subject holds: in a work queue those
    are exactly the unacknowledged ones."""
    # Here, not at the top: the pure section above needs none of the consumer loop.
    from forwarder.cluster.consumer import consumer_name

    prefix = f"{config.subject_prefix}.events."
    info = await js.stream_info(config.stream, subjects_filter=subjects_of(config))
    held = {
        int(subject[len(prefix) :]): count
        for subject, count in (info.state.subjects or {}).items()
        if subject[len(prefix) :].isdigit()
    }
    consumers = await asyncio.gather(
        *(js.consumer_info(config.stream, consumer_name(p)) for p in range(config.partitions)),
        return_exceptions=True,
    )
    lags: dict[int, int] = {}
    for partition, consumer in enumerate(consumers):
        if isinstance(consumer, ConsumerInfo):
            lags[partition] = lag_of(consumer)
        elif isinstance(consumer, NotFoundError):
            lags[partition] = held.get(partition, 0)
        elif isinstance(consumer, BaseException):
            raise consumer
    nodes: dict[str, NodeAdvert] = {}
    owners: dict[int, str] = {}
    try:
        name = node_bucket(config)
        nodes = await read_nodes(js, await js.key_value(name), name)
        name = lease_bucket(config)
        leases = await read_leases(js, await js.key_value(name), name)
        owners = {p: lease.owner for p, lease in leases.items() if p < config.partitions}
    except BucketNotFoundError:
        pass  # no node has started yet
    return cluster_section(
        node=None,
        stream=config.stream,
        partitions=config.partitions,
        nodes=nodes,
        owners=owners,
        lags=lags,
    )
