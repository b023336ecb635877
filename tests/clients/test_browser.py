"""The official Browser SDK in headless Chromium, on another origin, by fetch and by beacon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from forwarder.ingest.app import STATE_KEY
from tests.clients.chromium import Chromium
from tests.clients.forwarding import forwarding
from tests.clients.prerequisites import CLIENTS, require_chromium, require_packages
from tests.harness import AMPLITUDE_KEY, eventually, serve

PAGE = CLIENTS / "page"
USER = "browser-user-0001"
EMAIL = "ada@example.com"
BY_FETCH = [
    {"type": "Purchase", "properties": {"price": 42.5, "sku": "SKU-1"}, "insertId": "fetch-1"},
    {"type": "Purchase", "properties": {"price": 7, "sku": "SKU-2"}, "insertId": "fetch-2"},
    {"type": "Page Scrolled", "properties": {"sku": "not-selected"}, "insertId": "fetch-3"},
]
BY_BEACON = [
    {"type": "Checkout Left", "properties": {"price": 19, "sku": "SKU-3"}, "insertId": "beacon-1"},
    {"type": "Purchase", "properties": {"price": 5, "sku": "SKU-4"}, "insertId": "beacon-2"},
]
# Bundling, Chromium's start and both deliveries take seconds; this only bounds a hang.
WHOLE_TEST_SECONDS = 180


async def bundle_page(out: Path, node_modules: Path) -> Path:
    """esbuild the page's script with the real SDK into `out`; the folder to serve."""
    out.mkdir()
    (out / "index.html").write_bytes((PAGE / "index.html").read_bytes())
    process = await asyncio.create_subprocess_exec(
        str(node_modules / ".bin" / "esbuild"),
        str(PAGE / "sdk_page.js"),
        "--bundle",
        "--format=iife",
        "--target=chrome110",
        "--log-level=warning",
        f"--outfile={out / 'bundle.js'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()
    return out


def page_app(folder: Path) -> web.Application:
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(folder / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/", folder)
    return app


def call(function: str, *args: Any) -> str:
    return f"forwarderPage.{function}({', '.join(json.dumps(a) for a in args)})"


@pytest.mark.parametrize("listed", [False, True], ids=["any-origin", "listed-origin"])
async def test_browser_sdk_by_fetch_and_beacon_reaches_iterable_mapped(
    tmp_path: Path, listed: bool
) -> None:
    require_chromium()
    node_modules = require_packages("@amplitude/analytics-browser", "esbuild")
    async with asyncio.timeout(WHOLE_TEST_SECONDS):
        site = await bundle_page(tmp_path / "site", node_modules)
        page_runner, page_url = await serve(page_app(site))  # another port: cross-origin
        try:
            async with forwarding(tmp_path, [page_url] if listed else None) as running:
                async with Chromium() as chromium:
                    await chromium.open(page_url + "/")
                    upload_url = running.daemon.url + "/2/httpapi"
                    await chromium.evaluate(call("start", AMPLITUDE_KEY, upload_url, USER))
                    answers = await chromium.evaluate(
                        call("sendByFetch", {"email": EMAIL, "plan": "pro"}, BY_FETCH)
                    )
                    codes = [answer["code"] for answer in answers]
                    assert codes == [200] * 4, (answers, chromium.console)
                    await eventually(lambda: {"SKU-1", "SKU-2"} <= running.skus(), timeout=20)

                    queued = await chromium.evaluate(
                        call("queueForPageExit", {"plan": "enterprise"}, BY_BEACON)
                    )
                    assert queued == len(BY_BEACON)
                    # Leaving the page fires pagehide: the SDK's queue leaves by sendBeacon.
                    await chromium.open("about:blank")
                    await eventually(lambda: len(running.skus()) == 4, timeout=20)
        finally:
            await page_runner.cleanup()
    assert running.drained

    iterable = running.iterable
    # Each event once, mapped; the unselected one never left. The project is email-based,
    # so events name the user by email (a userId, if one is sent, must be this one).
    assert sorted(e["dataFields"]["sku"] for e in iterable.events) == [
        "SKU-1",
        "SKU-2",
        "SKU-3",
        "SKU-4",
    ]
    sent = {e["dataFields"]["sku"]: e for e in iterable.events}
    for sku, name, price, plan in [
        ("SKU-1", "Purchase", 42.5, "pro"),
        ("SKU-2", "Purchase", 7, "pro"),
        ("SKU-3", "Checkout Left", 19, "enterprise"),
        ("SKU-4", "Purchase", 5, "enterprise"),
    ]:
        event = sent[sku]
        assert event["eventName"] == name
        assert event["email"] == EMAIL and event.get("userId", USER) == USER
        assert event["dataFields"] == {"price": price, "sku": sku, "plan": plan, "planName": plan}
    first, second = iterable.users
    assert first["email"] == EMAIL and first["userId"] == USER
    assert first["dataFields"] == {"plan": "pro", "planName": "pro"}
    assert second["dataFields"] == {"plan": "enterprise", "planName": "enterprise"}


async def test_chromium_blocks_a_page_whose_origin_is_not_listed(tmp_path: Path) -> None:
    """The control for the tests above: what they pass through, Chromium really checks."""
    require_chromium()
    node_modules = require_packages("@amplitude/analytics-browser", "esbuild")
    async with asyncio.timeout(WHOLE_TEST_SECONDS):
        site = await bundle_page(tmp_path / "site", node_modules)
        page_runner, page_url = await serve(page_app(site))
        try:
            async with forwarding(tmp_path, ["https://shop.example.com"]) as running:
                async with Chromium() as chromium:
                    await chromium.open(page_url + "/")
                    body = json.dumps({"api_key": AMPLITUDE_KEY, "events": [BY_FETCH[0]]})
                    outcome = await chromium.evaluate(
                        f"fetch({json.dumps(running.daemon.url + '/2/httpapi')}, {{"
                        "method: 'POST', headers: {'Content-Type': 'application/json'}, "
                        f"body: {json.dumps(body)}}})"
                        ".then((r) => 'answered ' + r.status, (e) => 'blocked: ' + e.message)"
                    )
                    state = running.daemon.app[STATE_KEY]
                    accepted = state.events_accepted
        finally:
            await page_runner.cleanup()
    assert outcome.startswith("blocked"), outcome
    assert accepted == 0  # refused at the preflight: the POST itself never left Chromium
