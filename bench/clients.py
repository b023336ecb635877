"""The load clients of the benches: closed-loop posters of 100-event bodies, and their tally."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

JSON = {"Content-Type": "application/json"}


@dataclass
class ClientTally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    events_accepted: int = 0
    errors: int = 0


async def post_until(
    session: aiohttp.ClientSession,
    urls: list[str],
    bodies: list[bytes],
    concurrency: int,
    events_per_request: int,
    stop_at: float,
    tally: ClientTally,
) -> None:
    """`concurrency` clients post bodies round-robin over `urls` until `stop_at`."""

    async def client(index: int) -> None:
        n = index
        while time.monotonic() < stop_at:
            # Each send is new events: the daemon drops a repeated insert_id (as Amplitude
            # does), so the bodies' ids get this send's number.
            body = bodies[n % len(bodies)].replace(b'"ins-', b'"r%09d-' % n)
            url = urls[n % len(urls)]
            n += concurrency
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/2/httpapi", data=body, headers=JSON) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                tally.errors += 1
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if status == 200:
                tally.events_accepted += events_per_request
            elif status == 429:
                await asyncio.sleep(0.2)  # as an SDK would back off

    await asyncio.gather(*(client(i) for i in range(concurrency)))
