"""`forwarder cluster status`: the cluster's nodes, partition owners and lag, read from NATS."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the NATS client loads only when the command runs
    from forwarder.config import ClusterConfig, Config

# Exit codes: 2 for a config that has no cluster (as any config error), 1 when NATS can't
# be read or holds no stream yet.
EXIT_UNREADABLE = 1
EXIT_NOT_CLUSTER = 2
# Seconds to wait for a first NATS connection: an operator's command answers promptly.
CONNECT_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cluster_action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="nodes, partition owners and lag",
        description="Read the cluster's state from NATS (no daemon needed): the live nodes, "
        "each partition's owner and its lag (messages not yet acknowledged).",
    )
    status.add_argument("--config", default="config.toml", help="path to config.toml")
    status.add_argument("--json", action="store_true", help="print the /status cluster section")


def run(args: argparse.Namespace, config: Config) -> int:
    from nats.errors import Error as NatsError
    from nats.js.errors import NotFoundError

    from forwarder.cluster.errors import ClusterUnavailable
    from forwarder.cluster.status import render_table

    # The command says what went wrong itself; the client's log (connects, disconnects)
    # would only add noise to it.
    logging.getLogger("forwarder.cluster").setLevel(logging.ERROR)
    if config.cluster is None:
        print(f"forwarder: {args.config} has no [cluster] table", file=sys.stderr)
        return EXIT_NOT_CLUSTER
    try:
        section = asyncio.run(_read(config.cluster))
    except ClusterUnavailable as error:
        print(f"forwarder: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    except NotFoundError:
        print(
            f"forwarder: stream {config.cluster.stream} does not exist yet: no node has started",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    except (NatsError, TimeoutError, OSError) as error:
        print(f"forwarder: reading the cluster from NATS: {error!r}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(json.dumps(section, indent=2) if args.json else render_table(section))
    return 0


async def _read(cluster: ClusterConfig) -> dict[str, Any]:
    from forwarder.cluster.status import read_cluster
    from forwarder.cluster.stream import connect

    nc, js = await connect(cluster, wait_seconds=CONNECT_SECONDS)
    try:
        return await read_cluster(js, cluster)
    finally:
        await nc.close()
