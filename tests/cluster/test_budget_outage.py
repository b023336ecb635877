"""Redis (the shared rate budget) stopped under a sync: batches wait, none dies, all go."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from forwarder.cluster.clients import redis_client
from forwarder.cluster.rate import RedisRateBudget
from forwarder.config import SyncConfig
from forwarder.deliver import patient_budget
from forwarder.deliver.sync import SyncDelivery
from forwarder.iterable import Endpoint, TrackEvent, UserUpdate
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import DeadLetterFile
from tests.cluster.servers import RedisServer
from tests.harness import eventually, serve


async def test_a_stopped_redis_holds_batches_back_without_an_attempt_or_a_dead_letter(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patient_budget, "BUDGET_RETRY_SECONDS", 0.1)
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(SimulatorConfig(), state))
    sync = msgspec.convert(
        {
            "name": "budget",
            "api_key": "k" * 32,
            "base_url": url,
            "delivery": {"linger_ms": 10, "max_attempts": 2},
        },
        SyncConfig,
    )
    redis = redis_client(redis_server.url, timeout=0.5)
    acks: list[int] = []
    delivery = SyncDelivery(
        sync,
        RedisRateBudget(redis, [sync]),
        DeadLetterFile(tmp_path / "dead.jsonl", fsync=False),
        acknowledge=lambda seq, n: acks.append(seq),
    )
    await delivery.start()
    try:
        await redis_server.stop()
        delivery.enqueue(Endpoint.BULK_UPDATE, UserUpdate(email="a@x.io", dataFields={}), seq=1)
        item = TrackEvent(eventName="E", id="e1", createdAt=1, email="a@x.io")
        delivery.enqueue(Endpoint.TRACK_BULK, item, seq=2)
        await eventually(lambda: sum(delivery.stats.budget_waits.values()) >= 3, timeout=15)
        # Nothing went out without a slot, and nothing was given up.
        assert not state.requests and not acks
        assert not delivery.stats.dead and delivery.pause.reason is None
        await redis_server.start()
        await eventually(lambda: sorted(acks) == [1, 2], timeout=15)
        assert [e["id"] for e in state.events] == ["e1"]
        assert not delivery.stats.dead
        assert not (tmp_path / "dead.jsonl").exists()
    finally:
        await delivery.stop()
        await redis.aclose()
        await runner.cleanup()
