"""The pipeline: a request's profile changes count only once its record is durable, and
events without insert_id keep distinct, stable Iterable ids. Real app, real sockets,
real journal files; the journal's disk write is made to fail where a test says so."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.journal import Journal
from forwarder.store.records import decode_record
from tests.harness import Daemon, eventually, make_config, post_events, serve


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def identify(user: str, **operations: dict[str, Any]) -> dict[str, Any]:
    renamed = {f"${op}": values for op, values in operations.items()}
    return {"event_type": "$identify", "user_id": user, "user_properties": renamed}


def fail_writes(journal: Journal, count: int, hold: float = 0.0) -> Callable[[], int]:
    """The next `count` group writes of `journal` fail as a full disk would, after
    `hold` seconds (so more requests queue behind them); returns how many failed."""
    real = journal._write_group
    lock = threading.Lock()
    failed = 0

    def write_group(group: Any) -> None:
        nonlocal failed
        with lock:
            failing = failed < count
            if failing:
                failed += 1
        if failing:
            time.sleep(hold)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real(group)

    journal._write_group = write_group  # type: ignore[method-assign]
    return lambda: failed


async def start(tmp_path: Path) -> tuple[Daemon, SimulatorState, Any]:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(
        tmp_path,
        sim_url,
        durability="journal",
        users={"user_properties": ["plan", "logins"]},
    )
    return await Daemon(config).start(), state, runner


def journal_of(daemon: Daemon) -> Journal:
    assert isinstance(daemon.pipeline.log, Journal)
    return daemon.pipeline.log


async def test_a_resend_after_a_failed_request_applies_its_change_once(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon, state, runner = await start(tmp_path)
    try:
        first = identify("user-00001", set={"email": "ada@example.com", "plan": "free"})
        first["user_properties"]["$add"] = {"logins": 1}
        assert (await post_events(session, daemon.url, [first]))[0] == 200

        fail_writes(journal_of(daemon), 1)
        change = identify("user-00001", set={"plan": "pro"}, add={"logins": 1})
        status, body = await post_events(session, daemon.url, [change])
        assert status == 503 and body["code"] == 503
        # Nothing of the failed request is kept: the profile is as before it.
        assert daemon.pipeline.intake.profiles.get("user-00001")["plan"] == "free"

        assert (await post_events(session, daemon.url, [change]))[0] == 200  # the SDK's resend
        profile = daemon.pipeline.intake.profiles.get("user-00001")
        assert profile["plan"] == "pro" and profile["logins"] == 2
        await eventually(lambda: state.known_user_ids.get("user-00001", {}).get("plan") == "pro")
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    updates = [u for u in state.users if u.get("userId") == "user-00001"]
    # One update when the user appeared, one for the change: the failed request sent none.
    # (Two updates of one user still queued together go as one item, the later winning.)
    assert [u["dataFields"]["plan"] for u in updates] in (["free", "pro"], ["pro"])
    assert updates[-1]["dataFields"]["logins"] == 2


async def test_a_request_built_on_a_failed_one_fails_too(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon, state, runner = await start(tmp_path)
    try:
        base = identify("user-00002", set={"email": "bo@example.com", "plan": "free"})
        assert (await post_events(session, daemon.url, [base]))[0] == 200
        failed = fail_writes(journal_of(daemon), 1, hold=0.3)
        # The second request reads the first one's profile while its write is failing.
        first = post_events(session, daemon.url, [identify("user-00002", set={"plan": "pro"})])
        second = post_events(session, daemon.url, [identify("user-00002", add={"logins": 5})])
        statuses = [status for status, _ in await asyncio.gather(first, second)]
        assert statuses == [503, 503] and failed() == 1
        assert daemon.pipeline.intake.profiles.get("user-00002") == {
            "email": "bo@example.com",
            "plan": "free",
            "$iterable:test": "bo@example.com",  # the email Iterable was told
        }
        # Later requests start from what is durable.
        third = identify("user-00002", add={"logins": 1})
        assert (await post_events(session, daemon.url, [third]))[0] == 200
        assert daemon.pipeline.intake.profiles.get("user-00002")["logins"] == 1
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    assert all(u["dataFields"].get("plan") == "free" for u in state.users)


async def test_identical_events_without_insert_id_are_distinct_events(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon, state, runner = await start(tmp_path)
    try:
        who = identify("user-00003", set={"email": "cy@example.com"})
        same = {"event_type": "Ping", "user_id": "user-00003", "time": 1_700_000_000_000}
        assert (await post_events(session, daemon.url, [who, same, same]))[0] == 200
        assert (await post_events(session, daemon.url, [same]))[0] == 200
        await eventually(lambda: len(state.event_ids) == 3)
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()


async def test_a_stored_record_keeps_its_event_ids_across_a_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Iterable is unreachable at first: the event waits in the journal.
    config = make_config(tmp_path, "http://127.0.0.1:9", durability="journal")
    daemon = await Daemon(config).start()
    event = {"event_type": "Ping", "user_id": "user-00004", "user_properties": {}}
    event["user_properties"] = {"$set": {"email": "di@example.com"}}
    assert (await post_events(session, daemon.url, [event]))[0] == 200
    await daemon.crash()

    peek = Journal(tmp_path / "var" / "journal", max_bytes=10**9, segment_bytes=1 << 26)
    records = [decode_record(payload) for _, payload in await peek.recover()]
    await peek.close()
    stored = {entry.item for record in records for entry in record.items}
    (stored_event,) = [item for item in stored if b'"eventName":"Ping"' in item]

    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    try:
        again = await Daemon(make_config(tmp_path, sim_url, durability="journal")).start()
        await eventually(lambda: len(state.event_ids) == 1)
        assert await again.drain_and_stop()
    finally:
        await runner.cleanup()
    (delivered,) = state.event_ids
    assert f'"id":"{delivered}"'.encode() in stored_event
