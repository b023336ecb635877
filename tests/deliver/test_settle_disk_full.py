"""Dead letters on a full disk: the items stay pending (and in the journal) until their
letters are written; none vanish. The dead-letter folder is a real 1 MB tmpfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import DeadLetter, dead_letter_path, read_letters
from tests.harness import Daemon, eventually, iterable_id, make_config, post_events, serve


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs at the daemon's dead-letter folder, mounted for this test only."""
    folder = tmp_path / "var" / "dead-letters"
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the dev machine run as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Use up every byte of the folder's filesystem with one file; the file."""
    filler = folder / "filler"
    with open(filler, "wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    return filler


def bad(user: int) -> list[dict[str, Any]]:
    uid = f"user-{user:05d}"
    return [
        {
            "event_type": "$identify",
            "user_id": uid,
            "user_properties": {"$set": {"email": f"u{user}@invalid.test", "plan": "pro"}},
        },
        {"event_type": "Buy", "user_id": uid, "insert_id": f"buy-{user}"},
    ]


async def test_no_dead_letter_vanishes_while_the_disk_is_full(
    tmp_path: Path, tiny_disk: Path
) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, durability="journal")
    filler = fill(tiny_disk)
    daemon = await Daemon(config).start()
    delivery = daemon.pipeline.deliveries[0]
    try:
        async with aiohttp.ClientSession() as session:
            for start in range(0, 60, 20):
                events = [e for user in range(start, start + 20) for e in bad(user)]
                assert (await post_events(session, daemon.url, events))[0] == 200
            # Iterable refuses all 120 items; none can be written, none is settled.
            await eventually(lambda: delivery.stats.dead_letters_unwritten == 120)
            assert not delivery.stats.dead
            async with session.get(daemon.admin_url + "/status") as response:
                status = await response.json()
            assert status["syncs"][0]["dead_letters_unwritten"] == 120
            assert "cannot write dead letters" in status["syncs"][0]["last_error"]["message"]
            await daemon.pipeline.checkpoint()
            journal = daemon.pipeline.log.stats()
            assert journal.checkpoint < journal.last_seq  # the journal keeps them

            filler.unlink()  # space comes back
            await eventually(lambda: delivery.stats.dead_letters_unwritten == 0)
            assert sum(delivery.stats.dead.values()) == 120
            await daemon.pipeline.checkpoint()
            journal = daemon.pipeline.log.stats()
            assert journal.checkpoint == journal.last_seq
        assert await daemon.drain_and_stop()
    finally:
        await runner.cleanup()
    letters = [x for x in read_letters(dead_letter_path(config.storage.path, "test"))]
    assert all(isinstance(x, DeadLetter) for x in letters)
    assert len(letters) == 120 and sum(state.failed.values()) >= 120
    ids = {x.item.get("id") for x in letters if isinstance(x, DeadLetter) and "id" in x.item}
    assert ids == {iterable_id(bad(user)[1]) for user in range(60)}
