"""One node of the shared rate budget test, as its own process: `python -m
tests.cluster.rate_node REDIS_URL API_KEY RATE HEADROOM TASKS`.

It connects, prints "ready", reads "START END" (time.monotonic(), which every process on
the machine shares) from stdin, acquires from `TASKS` tasks at once until END, and prints
the acquisition times as one JSON list.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.cluster.rate_load import acquire_until, budget_for


async def main(url: str, api_key: str, rate: float, headroom: float, tasks: int) -> None:
    budget, client = budget_for(url, api_key, rate, headroom)
    try:
        await client.ping()
        print("ready", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        start, end = (float(part) for part in line.split())
        times = await acquire_until(budget, api_key, start, end, tasks)
        print(json.dumps(times), flush=True)
    finally:
        await client.aclose()


if __name__ == "__main__":
    url, api_key, rate, headroom, tasks = sys.argv[1:6]
    asyncio.run(main(url, api_key, float(rate), float(headroom), int(tasks)))
