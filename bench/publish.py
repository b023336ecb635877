"""`python -m bench.publish`: ClusterIngest's publish path alone, on a real nats-server.

Requests of 100 events over 64 partitions go through ClusterIngest.accept (group by
partition, encode, publish, wait for every PubAck) from a number of concurrent callers,
as the ingest routes would call it; HTTP and JSON decoding are left out (bench load
measures those). Reports events/s and the accept latency's p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster_procs import start_nats
from bench.report import write_result
from forwarder.cluster.publish import ClusterIngest
from forwarder.cluster.stream import connect, ensure_stream
from forwarder.config import ClusterConfig
from forwarder.ingest.amplitude import Event

USERS = 10_000
EVENTS_PER_REQUEST = 100


def request(rng: random.Random, serial: int) -> list[Event]:
    """100 events of random users, shaped like an SDK's: ids, properties, a $set."""
    events = []
    for n in range(EVENTS_PER_REQUEST):
        user = f"user-{rng.randrange(USERS):06}"
        events.append(
            Event(
                event_type="Purchase",
                user_id=user,
                device_id=f"device-{user}",
                time=1_700_000_000_000 + n,
                insert_id=f"{serial}-{n}",
                event_properties={"price": 9.99, "sku": f"sku-{n % 40}", "quantity": 1},
                user_properties={"$set": {"plan": "pro", "email": f"{user}@example.com"}},
                platform="iOS",
                os_name="ios",
                country="US",
            )
        )
    return events


async def caller(
    sink: ClusterIngest, requests: list[list[Event]], until: float, latencies: list[float]
) -> None:
    i = 0
    while time.monotonic() < until:
        started = time.perf_counter()
        await sink.accept(requests[i % len(requests)])
        latencies.append(time.perf_counter() - started)
        i += 1


async def run(nats_url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    config = ClusterConfig(nats_url=nats_url, node="bench", partitions=64)
    nc, js = await connect(config, wait_seconds=10)
    try:
        await ensure_stream(js, config)
        sink = ClusterIngest(nc, js, config)
        rng = random.Random(16)
        requests = [request(rng, serial) for serial in range(200)]
        latencies: list[float] = []
        await caller(sink, requests, time.monotonic() + 1.0, [])  # warm up
        published = sink.stats.events
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(caller(sink, requests, until, latencies) for _ in range(concurrency))
        )
        elapsed = time.monotonic() - started
        events = sink.stats.events - published
        cuts = statistics.quantiles(latencies, n=100)
        messages_per_request = sink.stats.messages / max(1, sink.stats.requests)
        return {
            "concurrency": concurrency,
            "events_per_second": round(events / elapsed),
            "requests_per_second": round(len(latencies) / elapsed),
            "messages_per_request": round(messages_per_request, 1),
            "p50_ms": round(cuts[49] * 1000, 2),
            "p99_ms": round(cuts[98] * 1000, 2),
        }
    finally:
        await nc.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__)
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent callers, a list")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    results = []
    for concurrency in (int(n) for n in args.concurrency.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
            nats = start_nats(Path(tmp))
            try:
                result = asyncio.run(
                    run(f"nats://127.0.0.1:{nats.port}", concurrency, args.seconds)
                )
            finally:
                nats.stop()
        print(result)
        results.append(result)
    write_result("cluster-publish", {"runs": results})


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
