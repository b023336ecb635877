"""Safety rails: the shipped development keys, refused toward Iterable, warned off loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from forwarder.config.schema import Config
from forwarder.config.sync import SyncConfig

# Keys config.toml falls back to when the environment sets none: fine against the
# simulator (`make run`), never to be sent to the real Iterable or exposed beyond loopback.
DEV_ITERABLE_KEYS = frozenset({"simulator-key"})
DEV_AMPLITUDE_KEYS = frozenset({"local-dev-key"})


def targets_iterable(sync: SyncConfig) -> bool:
    """True when the sync sends to Iterable itself: no base_url, or one on iterable.com."""
    if not sync.base_url:
        return True
    host = (urlsplit(sync.base_url).hostname or "").lower().rstrip(".")
    return host == "iterable.com" or host.endswith(".iterable.com")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every address): reachable from elsewhere


def config_warnings(config: Config) -> list[str]:
    """Risky but usable settings, for check-config and the daemon's start: key-path lines."""
    warnings = []
    server = config.server
    if not _is_loopback(server.host):
        for i, key in enumerate(server.api_keys):
            if key in DEV_AMPLITUDE_KEYS:
                warnings.append(
                    f"server.api_keys[{i}]: {key!r} is the shipped development key and "
                    f"listen {server.listen} is not a loopback address: anyone who can reach "
                    "it can send (set AMPLITUDE_API_KEY)"
                )
    return warnings
