"""Cluster load: 1, 2, 3... `forwarder run` nodes on one NATS and one Redis, with
one client process spreading requests over their ingest ports (no load balancer).

For each node count it reports ingest events/s, delivered events/s (what the simulator
took), ingest latency p50/p99, the statuses the clients got, the simulator's 429s, and
the CPU each kind of process used (cores busy on average): on a small machine the nodes,
NATS, Redis, the simulator and the client share the same cores, and these say which of
them the figures are bound by.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.bodies import identify_bodies, make_bodies
from bench.clients import JSON, ClientTally, post_until
from bench.cluster_procs import (
    Proc,
    cpu_seconds,
    free_port,
    start_nats,
    start_node,
    start_redis,
    start_simulator,
)
from bench.load import bench_sync, wait_ready
from bench.report import write_result


@dataclass
class ClusterScenario:
    nodes: int
    seconds: float
    concurrency: int
    events_per_request: int
    users: int
    partitions: int
    track_rate: float = 10.0
    update_rate: float = 5.0


def node_config(
    s: ClusterScenario, name: str, port: int, admin_port: int, directory: Path, urls: dict[str, str]
) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
api_keys = ["bench-key"]
drain_timeout_seconds = 10

[storage]
path = "{directory / "var"}"

[cluster]
nats_url = "{urls["nats"]}"
redis_url = "{urls["redis"]}"
node = "{name}"
partitions = {s.partitions}

{bench_sync(urls["simulator"], s.track_rate, s.update_rate)}"""


async def sim_events(session: aiohttp.ClientSession, sim_url: str) -> dict[str, Any]:
    async with session.get(f"{sim_url}/_sim/stats") as response:
        stats: dict[str, Any] = await response.json()
    return stats


async def stream_lag(session: aiohttp.ClientSession, admin_url: str) -> int | None:
    """Messages in the stream not yet acknowledged, as a node's /status says."""
    try:
        async with session.get(f"{admin_url}/status") as response:
            body = await response.json()
        return int(body["cluster"]["lag_total"])
    except (aiohttp.ClientError, KeyError, TypeError, ValueError):
        return None


async def wait_spread(session: aiohttp.ClientSession, admin_url: str, nodes: int) -> None:
    """Until every partition has an owner and each node owns its share: the load must not
    run into the moves of partitions that follow nodes joining."""
    for _ in range(600):  # bounded: 60 s
        try:
            async with session.get(f"{admin_url}/status") as response:
                cluster = (await response.json())["cluster"]
            owned = [node["partitions_owned"] for node in cluster["nodes"].values()]
            share = -(-int(cluster["partitions_total"]) // nodes)  # ceil: the fair share
            if (
                not cluster["unowned"]
                and len(owned) == nodes
                and 0 < min(owned) <= max(owned) <= share
            ):
                return
        except (aiohttp.ClientError, KeyError, TypeError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"partitions not spread over {nodes} nodes in 60 s")


async def drive(
    s: ClusterScenario, urls: list[str], admin: str, sim_url: str, procs: list[Proc]
) -> dict[str, Any]:
    bodies = make_bodies(200, s.events_per_request, users=s.users, seed=7)
    tally = ClientTally()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=s.concurrency * 2),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        for url in urls:
            await wait_ready(session, f"{url}/readyz", seconds=60)
        await wait_spread(session, admin, s.nodes)
        # Every user identified first (with an email), spread over the nodes, resent while
        # a node answers 429; then the users are known to Iterable before the load.
        for n, body in enumerate(identify_bodies(s.users)):
            for _ in range(600):
                url = urls[n % len(urls)]
                async with session.post(f"{url}/batch", data=body, headers=JSON) as response:
                    await response.read()
                if response.status == 200:
                    break
                await asyncio.sleep(0.1)
        for _ in range(600):  # bounded: at most 60 s for the identities to arrive
            if (await sim_events(session, sim_url))["known_users"] >= s.users:
                break
            await asyncio.sleep(0.1)

        before = await sim_events(session, sim_url)
        cpu_before = {proc.process.pid: cpu_seconds(proc.process.pid) for proc in procs}
        client_cpu_before = time.process_time()
        started = time.monotonic()
        stop_at = started + s.seconds

        await post_until(session, urls, bodies, s.concurrency, s.events_per_request, stop_at, tally)
        elapsed = time.monotonic() - started
        after = await sim_events(session, sim_url)
        lag_at_end = await stream_lag(session, admin)
        cpu = {
            proc.role: round(
                (cpu_seconds(proc.process.pid) - cpu_before[proc.process.pid]) / elapsed, 2
            )
            for proc in procs
        }
        cpu["client"] = round((time.process_time() - client_cpu_before) / elapsed, 2)
        # What was accepted and not yet delivered when the load stopped: the backlog.
        for _ in range(300):  # bounded: 30 s for it to drain
            if (await sim_events(session, sim_url))["events_received"] - before[
                "events_received"
            ] >= tally.events_accepted:
                break
            await asyncio.sleep(0.1)
        drained = time.monotonic() - started - elapsed
        final = await sim_events(session, sim_url)
    delivered = after["events_received"] - before["events_received"]
    latencies = sorted(tally.latencies) or [0.0]
    node_cpu = sum(v for role, v in cpu.items() if role.startswith("node"))
    return {
        "nodes": s.nodes,
        "partitions": s.partitions,
        "seconds": round(elapsed, 1),
        "concurrency": s.concurrency,
        "events_per_request": s.events_per_request,
        "ingest_events_per_second": round(tally.events_accepted / elapsed),
        "delivered_events_per_second": round(delivered / elapsed),
        "ingest_latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "ingest_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "client_statuses": tally.statuses,
        "client_errors": tally.errors,
        "stream_lag_messages_at_end": lag_at_end,
        "backlog_drain_seconds": round(drained, 1),
        "events_undelivered_after_drain_wait": max(
            0, tally.events_accepted - (final["events_received"] - before["events_received"])
        ),
        "simulator_429s": final.get("rate_limited"),
        "simulator_statuses": final.get("requests"),
        "simulator_max_requests_in_one_second": final.get("max_requests_in_one_second"),
        "cores_busy": {**cpu, "nodes_total": round(node_cpu, 2)},
    }


def run_scenario(s: ClusterScenario) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="forwarder-cluster-bench-") as tmp:
        root = Path(tmp)
        procs: list[Proc] = []
        try:
            (root / "nats").mkdir()
            (root / "redis").mkdir()
            procs.append(start_nats(root / "nats"))
            procs.append(start_redis(root / "redis"))
            procs.append(start_simulator(root, s.track_rate, s.update_rate))
            urls = {
                "nats": f"nats://127.0.0.1:{procs[0].port}",
                "redis": f"redis://127.0.0.1:{procs[1].port}/0",
                "simulator": f"http://127.0.0.1:{procs[2].port}",
            }
            ingest, admin = [], ""
            for index in range(1, s.nodes + 1):
                name, port = f"node-{index}", free_port()
                directory = root / name
                directory.mkdir()
                config = directory / "config.toml"
                admin_port = free_port()
                admin = admin or f"http://127.0.0.1:{admin_port}"
                config.write_text(node_config(s, name, port, admin_port, directory, urls))
                procs.append(start_node(name, config, port))
                ingest.append(f"http://127.0.0.1:{port}")
            servers = [proc for proc in procs if not proc.role.startswith("node")]
            measured = procs[3:] + servers
            return asyncio.run(drive(s, ingest, admin, urls["simulator"], measured))
        except Exception:
            for proc in procs:
                if proc.role.startswith("node"):
                    log = Path(tmp) / proc.role / "node.log"
                    print(f"--- {proc.role}\n{log.read_text()[-3000:]}" if log.exists() else "")
            raise
        finally:
            # The nodes first (they drain), then the servers they need.
            for proc in reversed(procs):
                proc.stop()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    parser.add_argument("--nodes", default="1,2,3", help="node counts to run, comma-separated")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--events-per-request", type=int, default=100)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--track-rate", type=float, default=10.0)
    parser.add_argument("--update-rate", type=float, default=5.0)
    args = parser.parse_args(argv)
    results = []
    for count in (int(n) for n in args.nodes.split(",")):
        scenario = ClusterScenario(
            count,
            args.seconds,
            args.concurrency,
            args.events_per_request,
            args.users,
            args.partitions,
            track_rate=args.track_rate,
            update_rate=args.update_rate,
        )
        print(
            f"cluster, {count} node(s), {args.seconds:.0f} s, {args.concurrency} clients:",
            flush=True,
        )
        result = run_scenario(scenario)
        print_result(result)
        write_result(f"cluster-{count}", result)
        results.append(result)
    return results


def print_result(r: dict[str, Any]) -> None:
    print(
        f"  ingest {r['ingest_events_per_second']:,} events/s, "
        f"delivered {r['delivered_events_per_second']:,} events/s, "
        f"latency p50 {r['ingest_latency_p50_ms']} ms p99 {r['ingest_latency_p99_ms']} ms\n"
        f"  client statuses {r['client_statuses']}, errors {r['client_errors']}, "
        f"simulator {r['simulator_statuses']}\n"
        f"  stream lag at the end {r['stream_lag_messages_at_end']} messages, backlog drained "
        f"in {r['backlog_drain_seconds']} s ({r['events_undelivered_after_drain_wait']:,} "
        "events not delivered by then)\n"
        f"  cores busy {r['cores_busy']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
