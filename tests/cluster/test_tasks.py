"""Stopping a task whose first cancellation was lost, as asyncio.wait_for can lose one."""

from __future__ import annotations

import asyncio

from forwarder.cluster.tasks import stop_task


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancellations += 1  # lost, as in wait_for's race (CPython gh-86296)
        await asyncio.sleep(30)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), timeout=10)
    assert task.cancelled() and cancellations == 1


async def test_an_ended_or_absent_task_is_left_as_it_is() -> None:
    async def fails() -> None:
        raise ValueError("ended with an error")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_task(task)  # its error is retrieved, not raised
    assert isinstance(task.exception(), ValueError)
    await stop_task(None)
