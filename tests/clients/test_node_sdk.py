"""The official Node SDK (@amplitude/analytics-node) run by node against the daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.clients.forwarding import forwarding
from tests.clients.prerequisites import CLIENTS, require_node, require_packages
from tests.harness import AMPLITUDE_KEY, eventually

USER = "node-user-0001"
EMAIL = "lin@example.com"
EVENTS = [
    {
        "type": "Purchase",
        "properties": {"price": 12, "sku": "N-1", "color": "red"},
        "insertId": "n-1",
    },
    {"type": "Checkout Left", "properties": {"price": 3, "sku": "N-2"}, "insertId": "n-2"},
    {"type": "Logged In", "properties": {"sku": "not-selected"}, "insertId": "n-3"},
]


async def run_node_sdk(node: str, server_url: str) -> list[dict[str, object]]:
    """node_sdk.mjs once; each event's answer as the SDK saw it."""
    argument = {
        "apiKey": AMPLITUDE_KEY,
        "serverUrl": server_url,
        "userId": USER,
        "profile": {"email": EMAIL, "plan": "team"},
        "events": EVENTS,
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(CLIENTS / "node_sdk.mjs"),
        json.dumps(argument),
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        output, errors = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors.decode()
    answers: list[dict[str, object]] = json.loads(output.decode().strip().splitlines()[-1])
    return answers


async def test_node_sdk_identify_and_track_reach_iterable_mapped(tmp_path: Path) -> None:
    node = require_node()
    require_packages("@amplitude/analytics-node")
    async with forwarding(tmp_path) as running:
        answers = await run_node_sdk(node, running.daemon.url + "/2/httpapi")
        assert [answer["code"] for answer in answers] == [200] * 4, answers
        await eventually(lambda: {"N-1", "N-2"} <= running.skus(), timeout=20)
    assert running.drained

    iterable = running.iterable
    assert sorted(e["dataFields"]["sku"] for e in iterable.events) == ["N-1", "N-2"]
    sent = {e["dataFields"]["sku"]: e for e in iterable.events}
    for sku, name, price in [("N-1", "Purchase", 12), ("N-2", "Checkout Left", 3)]:
        event = sent[sku]
        assert event["eventName"] == name
        assert event["email"] == EMAIL and event.get("userId", USER) == USER
        # Only the selected properties: "color" is not one of them.
        assert event["dataFields"] == {
            "price": price,
            "sku": sku,
            "plan": "team",
            "planName": "team",
        }
    (update,) = iterable.users
    assert update["email"] == EMAIL and update["userId"] == USER
    assert update["dataFields"] == {"plan": "team", "planName": "team"}
