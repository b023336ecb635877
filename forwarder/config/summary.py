"""The lines `forwarder check-config` prints about a config."""

from __future__ import annotations

from forwarder.config.cluster import no_secret
from forwarder.config.schema import Config


def summarize(config: Config) -> str:
    """The lines `forwarder check-config` prints."""
    lines = [
        f"listen {config.server.listen}, {len(config.server.api_keys)} Amplitude key(s), "
        f"storage {config.storage.path} ({config.storage.durability})"
    ]
    for sync in config.syncs:
        state = "enabled" if sync.enabled else "disabled"
        events = (
            f"events {', '.join(sync.events.select)} ({len(sync.events.where)} filter(s))"
            if sync.events.enabled
            else "events off"
        )
        users = (
            f"users {len(sync.users.user_properties)} propert(ies)"
            if sync.users.enabled
            else "users off"
        )
        lines.append(
            f"sync {sync.name}: {state}, {sync.project_type} project, {sync.endpoint_base}, "
            f"{events}, {users}, email <- {sync.mappings.email}, "
            f"userId <- {sync.mappings.user_id or 'off'}"
        )
    if not config.syncs:
        lines.append("no syncs: events are accepted and dropped after validation")
    cluster = config.cluster
    if cluster is not None:
        lines.append(
            f"cluster node {cluster.node}: stream {cluster.stream} ({cluster.partitions} "
            f"partitions, {cluster.replicas} replica(s)) on "
            f"{', '.join(no_secret(url) for url in cluster.nats_servers)}, "
            f"redis {no_secret(cluster.redis_url)}"
        )
    return "\n".join(lines)
