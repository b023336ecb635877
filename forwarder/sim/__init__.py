"""A fake Iterable (trackBulk, bulkUpdate, updateEmail) on aiohttp, for tests, bench, `make run`."""

# It answers with the shapes of Iterable's OpenAPI spec (repository Iterable/api-client,
# `api-docs.json`): trackBulk -> BulkTrackResponse, bulkUpdate -> UserBulkUpdateListResponse,
# updateEmail -> IterableApiResponse, errors as {"msg", "code", "params"}; users live in a
# project of one of Iterable's three types (keyed by email, userId, or both). On top it enforces the per-(key, endpoint) rate
# limits as a strict sliding one-second window and the byte and item caps, produces
# partial failures on demand, injects faults, and records what it saw for tests
# (SimulatorState) and benchmarks (GET /_sim/stats).
#
# Modules: config (the knobs and /_sim/faults), shapes (request bodies), state (what it
# saw and the rate windows), rules (pure checks and answers), bulk (an admitted request's
# items), app (the aiohttp routes and run_simulator).

from forwarder.sim.app import CONFIG_KEY, RNG_KEY, STATE_KEY, build_simulator_app, run_simulator
from forwarder.sim.config import FaultsUpdate, SimulatorConfig
from forwarder.sim.rules import Reply
from forwarder.sim.shapes import SimBulkUpdate, SimEvent, SimTrackBulk, SimUser
from forwarder.sim.state import RequestRecord, SimulatorState

__all__ = [
    "CONFIG_KEY",
    "RNG_KEY",
    "STATE_KEY",
    "FaultsUpdate",
    "Reply",
    "RequestRecord",
    "SimBulkUpdate",
    "SimEvent",
    "SimTrackBulk",
    "SimUser",
    "SimulatorConfig",
    "SimulatorState",
    "build_simulator_app",
    "run_simulator",
]
