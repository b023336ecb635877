"""`check-config --online`: ask Iterable whether each enabled sync's API key works."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec

from forwarder.config import Config, SyncConfig
from forwarder.errors import scrub

# GET /api/channels (Iterable's spec, api-docs.json: "Get all message channels within the
# project", no parameters, 401 "Invalid API key", 100 requests/s per project): read-only,
# small, and answered for any valid key of the project, so it tests the key and the URL
# without sending or changing anything.
PROBE_PATH = "channels"


class ProbeResult(msgspec.Struct, frozen=True):
    """What one sync's probe found: ok or not, and one line saying what Iterable said."""

    sync: str
    url: str
    ok: bool
    said: str


class _ErrorBody(msgspec.Struct):
    msg: str = ""
    code: str = ""


def _describe(status: int, body: bytes, location: str | None) -> tuple[bool, str]:
    """Whether the answer accepts the key, and what it said in a few words."""
    try:
        error = msgspec.json.decode(body, type=_ErrorBody)
        detail = " ".join(part for part in (error.code, error.msg) if part)
    except msgspec.DecodeError:
        detail = ""
    detail = f" ({scrub(detail)})" if detail else ""
    if status == 200:
        try:
            channels = msgspec.json.decode(body, type=dict[str, list[object]])["channels"]
        except (msgspec.DecodeError, KeyError):
            return False, "200 but not Iterable's answer (a proxy or a wrong base_url?)"
        return True, f"ok: key accepted ({len(channels)} channel(s))"
    if status == 401:
        return False, f"401 invalid API key{detail}"
    if status == 403:
        return False, f"403 forbidden: the key lacks permission{detail}"
    if 300 <= status < 400:
        return False, f"{status} redirect to {location or '?'} (a wrong base_url?)"
    if status in (404, 405):
        return False, f"{status} no such endpoint (a wrong base_url?){detail}"
    return False, f"HTTP {status}{detail}"


async def probe_sync(session: aiohttp.ClientSession, sync: SyncConfig) -> ProbeResult:
    """One GET with the sync's key; never raises for what the network or Iterable does."""
    url = sync.endpoint_base + PROBE_PATH
    try:
        async with session.get(
            url, headers={"Api-Key": sync.api_key}, allow_redirects=False
        ) as response:
            body = await response.read()
            ok, said = _describe(response.status, body, response.headers.get("Location"))
    except TimeoutError:
        ok, said = False, "unreachable: no answer within the timeout"
    except (aiohttp.ClientError, OSError) as error:
        ok, said = False, f"unreachable: {scrub(f'{type(error).__name__}: {error}')}"
    return ProbeResult(sync.name, url, ok, said)


async def probe_syncs(config: Config, timeout: float) -> list[ProbeResult]:
    """Every enabled sync probed at once, each within `timeout` seconds."""
    syncs = [sync for sync in config.syncs if sync.enabled]
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        return list(await asyncio.gather(*(probe_sync(session, sync) for sync in syncs)))
