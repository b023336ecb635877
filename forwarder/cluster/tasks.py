"""Stopping a background task for certain, even one whose cancellation got lost."""

from __future__ import annotations

import asyncio
from typing import Any

# How long a cancelled task gets to end before it is cancelled again.
PATIENCE_SECONDS = 1.0


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and return once it has ended.

    In Python 3.11, asyncio.wait_for can swallow a cancellation that arrives as its inner
    future completes (CPython gh-86296, fixed in 3.12); a loop around such a call (nats-py's
    fetch, our lag reads) then goes on as if never cancelled, and a plain cancel-and-await
    waits forever. So: cancel again until the task has ended.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=PATIENCE_SECONDS)
    # Retrieved, so an error it ended with is not reported as never retrieved.
    await asyncio.gather(task, return_exceptions=True)
