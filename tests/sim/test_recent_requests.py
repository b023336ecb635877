"""The simulator shows what was sent (GET /_sim/requests) and answers the key probe
(GET /api/channels), on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from forwarder.sim import SimulatorConfig, build_simulator_app
from forwarder.sim.recent import RecentRequests
from tests.harness import serve

GOOD, BAD = "good-key", "bad-key"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    runner, url = await serve(build_simulator_app(SimulatorConfig(api_keys=frozenset({GOOD}))))
    async with aiohttp.ClientSession() as session:
        yield url, session
    await runner.cleanup()


async def _track(session: aiohttp.ClientSession, url: str, name: str, key: str) -> int:
    event = {"email": f"{name}@example.com", "eventName": name, "dataFields": {"n": 1}}
    async with session.post(
        f"{url}/api/events/trackBulk",
        data=msgspec.json.encode({"events": [event]}),
        headers={"Api-Key": key, "Content-Type": "application/json"},
    ) as response:
        return response.status


async def test_requests_shows_the_last_bodies_with_their_answers(
    sim: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = sim
    for name, key in (("first", GOOD), ("second", GOOD), ("third", BAD)):
        await _track(session, url, name, key)

    async with session.get(f"{url}/_sim/requests?endpoint=trackBulk&limit=2") as response:
        assert response.status == 200
        shown = (await response.json())["requests"]
    assert [entry["body"]["events"][0]["eventName"] for entry in shown] == ["second", "third"]
    assert [entry["status"] for entry in shown] == [200, 401]
    assert all(entry["endpoint"] == "events/trackBulk" for entry in shown)
    assert all(entry["time"].endswith("Z") and entry["bytes"] > 0 for entry in shown)
    assert GOOD not in str(shown) and BAD not in str(shown)  # bodies, never the keys

    async with session.get(f"{url}/_sim/requests?endpoint=users/bulkUpdate") as response:
        assert (await response.json())["requests"] == []
    async with session.get(f"{url}/_sim/requests?limit=x") as response:
        assert response.status == 400


def test_ring_is_bounded_by_count_and_by_bytes() -> None:
    ring = RecentRequests(count=3, max_bytes=100)
    for n in range(5):
        ring.add("events/trackBulk", 200, b"[%d]" % n, at=float(n))
    assert [sent.body for sent in ring.last("trackBulk", 10)] == [b"[2]", b"[3]", b"[4]"]
    ring.add("events/trackBulk", 200, b"x" * 95, at=5.0)
    # 3 + 3 + 95 bytes pass the 100-byte cap: the oldest goes, 3 + 95 stay.
    assert [sent.at for sent in ring.last("events/trackBulk", 10)] == [4.0, 5.0]
    ring.add("events/trackBulk", 200, b"y" * 500, at=6.0)  # alone over the cap: kept alone
    assert [sent.at for sent in ring.last(None, 10)] == [6.0]


async def test_channels_probe_checks_the_api_key(sim: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = sim
    async with session.get(f"{url}/api/channels", headers={"Api-Key": GOOD}) as response:
        assert response.status == 200
        channels = (await response.json())["channels"]
    assert channels and {"id", "name", "channelType", "messageMedium"} <= set(channels[0])
    for headers in ({"Api-Key": BAD}, {}):
        async with session.get(f"{url}/api/channels", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "BadApiKey"
