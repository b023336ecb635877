"""Asking a running daemon to replay (its admin listener), and following its progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from forwarder.config import ServerConfig
from forwarder.deliver.letter_select import LetterFilter

# Seconds between progress polls (and lines).
POLL_SECONDS = 1.0


class NoDaemon(Exception):
    """Nothing listens at the admin address: the caller replays by itself."""


class DaemonRefused(Exception):
    """The daemon answered but would not replay (an unknown sync, a bad filter)."""


def admin_url(server: ServerConfig) -> str:
    """Where the daemon's admin routes answer, from the config's admin_listen (its listen
    when the config predates the admin listener); a wildcard host means this host."""
    address = str(getattr(server, "admin_listen", None) or server.listen)
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def progress_text(body: dict[str, Any]) -> str:
    return "; ".join(
        f"{s['sync']}: resent {s['resent']}, delivered {s['delivered']}, "
        f"dead again {s['dead_again']}, left {s['left']}"
        for s in body["syncs"]
    )


async def replay_via_daemon(
    server: ServerConfig,
    sync: str | None,
    chosen: LetterFilter,
    timeout: float,
    report: Callable[[str], None],
) -> dict[str, Any]:
    """Start a replay in the daemon and follow it until done or `timeout`; its last counts
    (with "done": false when the daemon is still at it). Raises NoDaemon when nothing
    listens there, DaemonRefused when the daemon says no."""
    base = admin_url(server)
    request = {"sync": sync, **chosen.to_json()}
    deadline = time.monotonic() + timeout
    client_timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        try:
            async with session.post(f"{base}/dead-letters/replay", json=request) as response:
                body = await _answer(response)
        except aiohttp.ClientConnectorError as error:
            raise NoDaemon(f"{base}: {error}") from None
        report(f"replay {body['id']} in the daemon at {base}: {progress_text(body)}")
        while not body["done"] and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            async with session.get(f"{base}/dead-letters/replay/{body['id']}") as response:
                body = await _answer(response)
            report(progress_text(body))
    return body


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    if response.status == 404 and response.content_type != "application/json":
        raise DaemonRefused(
            f"{response.url} is not a forwarder admin listener with dead-letter replay "
            "(an older daemon?): stop it or use --local"
        )
    body = await response.json(content_type=None)
    if response.status >= 400 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else body
        raise DaemonRefused(f"the daemon refused: {error}")
    return body
