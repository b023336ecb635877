"""Helpers for end-to-end tests: the real daemon app and servers on 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from forwarder.config import Config, parse_config
from forwarder.daemon import build_daemon_app, open_pipeline
from forwarder.ingest.amplitude import Event
from forwarder.ingest.app import STATE_KEY
from forwarder.ingest.route import event_id
from forwarder.ops.admin import build_admin_app
from forwarder.pipeline import Pipeline

AMPLITUDE_KEY = "test-amplitude-key"
ITERABLE_KEY = "test-iterable-key"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free 127.0.0.1 port; the runner and the base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def make_config(
    tmp_path: Path,
    iterable_url: str,
    durability: str = "memory",
    syncs: list[dict[str, Any]] | None = None,
    **sync_overrides: Any,
) -> Config:
    """A config with one sync (or `syncs`) pointed at `iterable_url`; fast test timings."""
    sync: dict[str, Any] = {
        "name": "test",
        "api_key": ITERABLE_KEY,
        "base_url": iterable_url,
        "events": {
            "select": ["*"],
            "event_properties": ["price", "sku"],
            "user_properties": ["plan"],
        },
        "users": {"user_properties": ["plan", "city"]},
        "delivery": {
            "linger_ms": 20,
            "backoff_initial_seconds": 0.02,
            "backoff_max_seconds": 0.2,
            "auth_retry_seconds": 0.2,
            "max_retry_seconds": 30,
            "max_attempts": 20,
        },
    }
    for key, value in sync_overrides.items():
        if isinstance(value, dict) and isinstance(sync.get(key), dict):
            sync[key] = {**sync[key], **value}
        else:
            sync[key] = value
    raw = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "api_keys": [AMPLITUDE_KEY],
            "drain_timeout_seconds": 10,
        },
        "storage": {"path": str(tmp_path / "var"), "durability": durability},
        "syncs": syncs if syncs is not None else [sync],
    }
    return parse_config(raw, env={})


class Daemon:
    """The daemon's app and pipeline in this process, on a real socket."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pipeline: Pipeline | None = None
        self.runner: web.AppRunner | None = None
        self.admin_runner: web.AppRunner | None = None
        self.url = ""
        # The admin listener's own port: /metrics, /status (and /healthz, /readyz).
        self.admin_url = ""

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "start() first"
        return self._pipeline

    async def start(self) -> Daemon:
        self._pipeline = await open_pipeline(self.config)
        app = build_daemon_app(self.config, self._pipeline)
        self.runner, self.url = await serve(app)
        admin = build_admin_app(self._pipeline, app[STATE_KEY])
        self.admin_runner, self.admin_url = await serve(admin)
        await self.pipeline.recover()
        await self.pipeline.start()
        app[STATE_KEY].ready = True
        self.app = app
        return self

    async def drain_and_stop(self, timeout: float = 20.0) -> bool:
        assert self.runner is not None and self.admin_runner is not None
        self.app[STATE_KEY].ready = False
        self.app[STATE_KEY].accepting = False
        drained = await self.pipeline.drain(timeout)
        await self.pipeline.stop()
        await self.close_listeners()
        return drained

    async def crash(self) -> None:
        """Stop as a crash would: the pipeline stopped, nothing drained, both ports shut."""
        await self.pipeline.stop()
        await self.close_listeners()

    async def close_listeners(self) -> None:
        assert self.runner is not None and self.admin_runner is not None
        await self.runner.cleanup()
        await self.admin_runner.cleanup()


def iterable_id(event: dict[str, Any]) -> str:
    """The Iterable event id the daemon gives an Amplitude event that has an insert_id."""
    assert event.get("insert_id"), "events without insert_id get ids salted per request"
    return event_id(msgspec.convert(event, Event), b"")


def upload_body(events: list[dict[str, Any]], api_key: str = AMPLITUDE_KEY) -> bytes:
    return msgspec.json.encode({"api_key": api_key, "events": events})


async def post_events(
    session: aiohttp.ClientSession,
    url: str,
    events: list[dict[str, Any]],
    route: str = "/2/httpapi",
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        url + route, data=upload_body(events), headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json(content_type=None)


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = 20.0,
    every: float = 0.02,
) -> None:
    """Wait until `check()` holds, bounded by `timeout` (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)
