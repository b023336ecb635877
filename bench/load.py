"""End-to-end load: simulator and daemon as subprocesses, concurrent clients over 127.0.0.1.

Reports ingest events/s, delivered events/s, ingest latency p50/p99, Iterable requests/s
per endpoint against the configured limits, mean items per request, 429s seen by the
clients and by the simulator, and the daemon's peak RSS; for each durability mode asked.
`--overload` lowers the simulated Iterable's capacity far below the offered load, to show
that memory stays bounded, clients get 429s and Iterable sees none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench.bodies import identify_bodies, make_bodies
from bench.clients import JSON, ClientTally, post_until
from bench.report import write_result

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Scenario:
    durability: str
    seconds: float
    concurrency: int
    events_per_request: int
    users: int
    track_rate: float = 10.0
    update_rate: float = 5.0
    max_events_per_request: int = 8000
    max_users_per_request: int = 1000
    max_queued_items: int = 500_000
    name: str = "load"


def bench_sync(base_url: str, track_rate: float, update_rate: float) -> str:
    """The sync every bench daemon runs (its [syncs.limits] table left open for more)."""
    return f"""[[syncs]]
name = "bench"
api_key = "bench-iterable-key"
base_url = "{base_url}"

[syncs.mappings]
campaign_id = "event_properties.campaign_id"
template_id = "event_properties.template_id"

[syncs.events]
select = ["*"]
event_properties = ["price", "sku"]
user_properties = ["plan"]

[syncs.users]
user_properties = ["plan", "city"]

[syncs.limits]
track_bulk_per_second = {track_rate}
bulk_update_per_second = {update_rate}
"""


def daemon_config(
    s: Scenario, listen_port: int, sim_port: int, storage: Path, admin_port: int
) -> str:
    return f"""
[server]
listen = "127.0.0.1:{listen_port}"
admin_listen = "127.0.0.1:{admin_port}"
api_keys = ["bench-key"]
drain_timeout_seconds = 10

[storage]
path = "{storage}"
durability = "{s.durability}"

{bench_sync(f"http://127.0.0.1:{sim_port}", s.track_rate, s.update_rate)}max_events_per_request = {s.max_events_per_request}
max_users_per_request = {s.max_users_per_request}

[syncs.delivery]
max_queued_items = {s.max_queued_items}
max_queued_bytes = 2_000_000_000
"""


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc (VmRSS now, VmHWM the peak), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def wait_ready(session: aiohttp.ClientSession, url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not get ready in {seconds} s")


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name with labels -> value, from Prometheus text."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


async def drive(
    s: Scenario, daemon_url: str, sim_url: str, pid: int, progress: bool, admin_url: str
) -> dict[str, Any]:
    bodies = make_bodies(200, s.events_per_request, users=s.users, seed=7)
    tally = ClientTally()
    peak_queue = 0.0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=s.concurrency * 2),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        await wait_ready(session, f"{daemon_url}/readyz")
        # Every user identified first (with an email), resent while the daemon says 429.
        warmup_started = time.monotonic()
        for body in identify_bodies(s.users):
            for _ in range(600):
                async with session.post(f"{daemon_url}/batch", data=body, headers=JSON) as response:
                    await response.read()
                if response.status != 429:
                    break
                await asyncio.sleep(0.1)
        warmup_seconds = time.monotonic() - warmup_started
        warmup_rss = memory_mb(pid)
        stop_at = time.monotonic() + s.seconds

        async def monitor() -> None:
            nonlocal peak_queue
            started = time.monotonic()
            while time.monotonic() < stop_at:
                await asyncio.sleep(1.0)
                metrics = await fetch_metrics(session, admin_url)
                queue = metrics.get('forwarder_sync_queue_items{sync="bench"}', 0.0)
                peak_queue = max(peak_queue, queue)
                delivered = metrics.get(DELIVERED, 0.0)
                if progress:
                    elapsed = time.monotonic() - started
                    print(
                        f"  t={elapsed:4.0f}s accepted {tally.events_accepted:>10,} "
                        f"delivered {delivered:>10,.0f} queue {queue:>9,.0f} "
                        f"429s {tally.statuses.get(429, 0):>6,} rss {memory_mb(pid):6.0f} MB",
                        flush=True,
                    )

        load_started = time.monotonic()
        before = await fetch_metrics(session, admin_url)
        await asyncio.gather(
            monitor(),
            post_until(
                session, [daemon_url], bodies, s.concurrency, s.events_per_request, stop_at, tally
            ),
        )
        elapsed = time.monotonic() - load_started
        after = await fetch_metrics(session, admin_url)
        async with session.get(f"{sim_url}/_sim/stats") as response:
            sim = await response.json()
    delivered = after.get(DELIVERED, 0.0) - before.get(DELIVERED, 0.0)
    latencies = sorted(tally.latencies) or [0.0]

    def moved(name: str, endpoint: str) -> float:
        key = f'{name}{{endpoint="{endpoint}",sync="bench"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    endpoints = ("events/trackBulk", "users/bulkUpdate")
    requests = {e: moved("forwarder_sync_iterable_requests_total", e) for e in endpoints}
    items = {e: moved("forwarder_sync_items_sent_total", e) for e in endpoints}
    return {
        "scenario": s.name,
        "durability": s.durability,
        "seconds": round(elapsed, 1),
        "concurrency": s.concurrency,
        "events_per_request": s.events_per_request,
        "ingest_events_per_second": round(tally.events_accepted / elapsed),
        "delivered_events_per_second": round(delivered / elapsed),
        "ingest_latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "ingest_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "client_statuses": tally.statuses,
        "client_errors": tally.errors,
        "iterable_requests_per_second": {
            e: {
                "measured": round(n / elapsed, 2),
                "limit": s.track_rate if e.startswith("events") else s.update_rate,
            }
            for e, n in requests.items()
        },
        "mean_items_per_request": {
            e: round(items[e] / requests[e], 1) if requests[e] else 0 for e in requests
        },
        "simulator_429s": sim.get("rate_limited"),
        "simulator_max_requests_in_one_second": sim.get("max_requests_in_one_second"),
        "peak_queue_items": peak_queue,
        "daemon_peak_rss_mb": round(memory_mb(pid, "VmHWM"), 1),
        "users": s.users,
        "identify_warmup_users_per_second": round(s.users / warmup_seconds),
        "daemon_rss_after_warmup_mb": round(warmup_rss, 1),
    }


DELIVERED = 'forwarder_sync_items_forwarded_total{endpoint="events/trackBulk",sync="bench"}'


async def fetch_metrics(session: aiohttp.ClientSession, admin_url: str) -> dict[str, float]:
    async with session.get(f"{admin_url}/metrics") as response:
        return parse_metrics(await response.text())


def run_scenario(s: Scenario, progress: bool = True) -> dict[str, Any]:
    sim_port, daemon_port, admin_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(daemon_config(s, daemon_port, sim_port, Path(tmp) / "var", admin_port))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forwarder",
                "simulate-iterable",
                "--port",
                str(sim_port),
                "--track-bulk-per-second",
                str(s.track_rate),
                "--bulk-update-per-second",
                str(s.update_rate),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log = open(Path(tmp) / "daemon.log", "w")
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forwarder",
                "run",
                "--config",
                str(config),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            return asyncio.run(
                drive(
                    s,
                    f"http://127.0.0.1:{daemon_port}",
                    f"http://127.0.0.1:{sim_port}",
                    daemon.pid,
                    progress,
                    f"http://127.0.0.1:{admin_port}",
                )
            )
        finally:
            for process in (daemon, sim):
                process.send_signal(signal.SIGTERM)
            for process in (daemon, sim):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            log.close()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--events-per-request", type=int, default=100)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument(
        "--track-rate", type=float, default=10.0, help="Iterable's trackBulk requests/s"
    )
    parser.add_argument(
        "--update-rate",
        type=float,
        default=5.0,
        help="Iterable's bulkUpdate requests/s (raise it to measure the daemon, not Iterable,"
        " with many distinct users: each new user costs a user update first)",
    )
    parser.add_argument("--durability", choices=["journal", "memory", "both"], default="both")
    parser.add_argument("--overload", action="store_true", help="also run the overload scenario")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    modes = ["journal", "memory"] if args.durability == "both" else [args.durability]
    results = []
    for mode in modes:
        scenario = Scenario(
            mode,
            args.seconds,
            args.concurrency,
            args.events_per_request,
            args.users,
            track_rate=args.track_rate,
            update_rate=args.update_rate,
        )
        print(
            f"load, durability={mode}, {args.seconds:.0f} s, {args.concurrency} clients:",
            flush=True,
        )
        result = run_scenario(scenario, not args.quiet)
        print_result(result)
        write_result(f"load-{mode}", result)
        results.append(result)
    if len(results) == 2 and results[1]["ingest_events_per_second"]:
        ratio = results[0]["ingest_events_per_second"] / results[1]["ingest_events_per_second"]
        print(f"journal/memory ingest ratio: {ratio:.2f}")
    if args.overload:
        # Iterable absorbs 2 requests/s of 500 events = 1,000 events/s; clients offer far more.
        scenario = Scenario(
            "memory",
            args.seconds,
            args.concurrency,
            args.events_per_request,
            args.users,
            track_rate=2,
            update_rate=2,
            max_events_per_request=500,
            max_users_per_request=500,
            max_queued_items=50_000,
            name="overload",
        )
        print("overload: Iterable absorbs ~1,000 events/s, queue cap 50,000 items:", flush=True)
        result = run_scenario(scenario, not args.quiet)
        print_result(result)
        write_result("load-overload", result)
        results.append(result)
    return results


def print_result(r: dict[str, Any]) -> None:
    print(
        f"  ingest {r['ingest_events_per_second']:,} events/s, delivered {r['delivered_events_per_second']:,} events/s, "
        f"latency p50 {r['ingest_latency_p50_ms']} ms p99 {r['ingest_latency_p99_ms']} ms\n"
        f"  iterable req/s {msgspec.json.encode(r['iterable_requests_per_second']).decode()}, "
        f"mean items/request {r['mean_items_per_request']}\n"
        f"  client statuses {r['client_statuses']}, simulator 429s {r['simulator_429s']}, "
        f"simulator max requests in 1 s {r['simulator_max_requests_in_one_second']}, "
        f"peak queue {r['peak_queue_items']:,.0f}, daemon peak RSS {r['daemon_peak_rss_mb']} MB\n"
        f"  {r['users']:,} users identified first at {r['identify_warmup_users_per_second']:,}/s, "
        f"daemon RSS then {r['daemon_rss_after_warmup_mb']} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
