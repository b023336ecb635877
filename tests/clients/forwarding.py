"""The daemon in front of the simulated Iterable, for the client tests; always stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.harness import Daemon, make_config, serve

SYNC_SETTINGS: dict[str, Any] = {
    "mappings": {
        "email": "user_properties.email",
        "user_id": "user_id",
        "fields": {"user_properties.plan": "planName"},
    },
    "events": {
        "select": ["Purchase", "Checkout Left"],
        "event_properties": ["price", "sku"],
        "user_properties": ["plan"],
    },
    "users": {"user_properties": ["plan"]},
}


@dataclass
class Forwarding:
    daemon: Daemon
    iterable: SimulatorState
    drained: bool = False

    def skus(self) -> set[str]:
        """The `sku` of every event Iterable took (the tests give each event its own)."""
        return {e["dataFields"].get("sku") for e in self.iterable.events}


@asynccontextmanager
async def forwarding(
    tmp_path: Path, allowed_origins: list[str] | None = None
) -> AsyncIterator[Forwarding]:
    """The simulator (users before events, as Iterable needs) and the daemon with a journal.

    Drained and stopped on the way out, failure or not, so a failed test leaves no tasks.
    """
    iterable = SimulatorState()
    sim_runner, sim_url = await serve(
        build_simulator_app(SimulatorConfig(require_user_first=True), iterable)
    )
    try:
        config = make_config(tmp_path, sim_url, durability="journal", **SYNC_SETTINGS)
        if allowed_origins is not None:
            server = msgspec.structs.replace(config.server, allowed_origins=allowed_origins)
            config = msgspec.structs.replace(config, server=server)
        daemon = await Daemon(config).start()
        running = Forwarding(daemon, iterable)
        try:
            yield running
        finally:
            running.drained = await daemon.drain_and_stop(timeout=10)
    finally:
        await sim_runner.cleanup()
