"""The sender on its own: one batch through HTTP, retries, splits, pauses and settlement.

Iterable is a small scripted aiohttp server on 127.0.0.1: each test lists the answers it
gives, in order, and reads back the requests it got.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from forwarder.config import SyncConfig
from forwarder.deliver.lanes import Queued
from forwarder.deliver.pause import Pause
from forwarder.deliver.rate import SendStamp
from forwarder.deliver.sender import Sender
from forwarder.deliver.settle import Settlement
from forwarder.deliver.stats import DeliveryStats
from forwarder.errors import FailureKind
from forwarder.iterable import Endpoint, TrackEvent, identity_of
from forwarder.store.dead_letters import DeadLetter, DeadLetterFile, read_letters
from tests.harness import serve

TRACK = Endpoint.TRACK_BULK
Answer = tuple[int, dict[str, Any] | str]


@dataclass
class ScriptedIterable:
    """Answers requests with `answers` in order (the last one repeats), records bodies."""

    answers: list[Answer]
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status, body = self.answers[min(len(self.bodies), len(self.answers)) - 1]
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


class NoWaitBudget:
    """A rate budget that never makes anyone wait (the gates have tests of their own)."""

    async def acquire(self, api_key: str, endpoint: Endpoint) -> SendStamp:
        return [time.monotonic()]


@dataclass
class Rig:
    sender: Sender
    iterable: ScriptedIterable
    stats: DeliveryStats
    acks: list[int]
    letters_path: Path

    def letters(self) -> list[DeadLetter]:
        return [x for x in read_letters(self.letters_path) if isinstance(x, DeadLetter)]

    async def send(self, batch: list[Queued]) -> list[Queued]:
        slot = asyncio.Semaphore(1)
        await slot.acquire()  # the batcher holds the slot when it hands a batch over
        back = await self.sender.send(TRACK, batch, [time.monotonic()], slot)
        assert slot.locked(), "the sender must hand the slot back as it got it"
        return back


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    answers: list[Answer] = request.param
    iterable = ScriptedIterable(answers)
    app = web.Application()
    app.router.add_post("/api/events/trackBulk", iterable.handle)
    runner, url = await serve(app)
    sync = msgspec.convert(
        {
            "name": "unit",
            "api_key": "k" * 32,
            "base_url": url,
            "delivery": {
                "backoff_initial_seconds": 0.001,
                "backoff_max_seconds": 0.005,
                "max_attempts": 3,
                "request_timeout_seconds": 5,
            },
        },
        SyncConfig,
    )
    stats = DeliveryStats()
    acks: list[int] = []
    letters_path = tmp_path / "dead.jsonl"
    settlement = Settlement(
        "unit", stats, DeadLetterFile(letters_path, fsync=False), lambda seq, n: acks.append(seq)
    )
    sender = Sender(sync, NoWaitBudget(), settlement, Pause(sync))
    await sender.start()
    try:
        yield Rig(sender, iterable, stats, acks, letters_path)
    finally:
        await sender.close()
        await runner.cleanup()


def batch(count: int, bad: frozenset[int] = frozenset()) -> list[Queued]:
    items = []
    for n in range(count):
        domain = "invalid.test" if n in bad else "example.com"
        item = TrackEvent(eventName="Buy", id=f"id-{n}", createdAt=1, email=f"u{n}@{domain}")
        items.append(Queued(identity_of(item), TRACK, item, msgspec.json.encode(item), seq=n))
    return items


def sent_ids(iterable: ScriptedIterable) -> list[list[str]]:
    return [[event["id"] for event in body["events"]] for body in iterable.bodies]


OK: Answer = (200, {"successCount": 1, "failCount": 0})


@pytest.mark.parametrize("rig", [[(200, {})]], indirect=True)
async def test_a_plain_200_delivers_and_acknowledges_every_item(rig: Rig) -> None:
    assert await rig.send(batch(3)) == []
    assert sent_ids(rig.iterable) == [["id-0", "id-1", "id-2"]]
    assert sorted(rig.acks) == [0, 1, 2]
    assert rig.stats.delivered[TRACK.value] == 3 and not rig.stats.dead


@pytest.mark.parametrize("rig", [[(500, {"msg": "down"}), (200, {})]], indirect=True)
async def test_a_5xx_is_retried_with_the_same_bytes(rig: Rig) -> None:
    items = batch(2)
    assert await rig.send(items) == []
    assert sent_ids(rig.iterable) == [["id-0", "id-1"], ["id-0", "id-1"]]
    assert all(q.attempts == 1 for q in items)
    assert rig.stats.retries[TRACK.value] == 2 and sorted(rig.acks) == [0, 1]


@pytest.mark.parametrize("rig", [[(503, "busy")]], indirect=True)
async def test_retries_run_out_into_dead_letters_of_their_own_kind(rig: Rig) -> None:
    assert await rig.send(batch(2)) == []
    assert len(rig.iterable.bodies) == 3  # max_attempts
    letters = rig.letters()
    assert [x.kind for x in letters] == [FailureKind.RETRIES_EXHAUSTED.value] * 2
    assert letters[0].reason.startswith("after 3 attempts") and letters[0].attempts == 3
    assert rig.stats.dead[FailureKind.RETRIES_EXHAUSTED] == 2 and sorted(rig.acks) == [0, 1]


NAMES_ITEM_1: Answer = (400, {"code": "BadJsonBody", "msg": "bad", "params": {"events[1]": "x"}})


@pytest.mark.parametrize("rig", [[NAMES_ITEM_1, (200, {})]], indirect=True)
async def test_a_400_naming_an_item_kills_it_and_resends_the_rest_at_once(rig: Rig) -> None:
    assert await rig.send(batch(3)) == []
    assert sent_ids(rig.iterable) == [["id-0", "id-1", "id-2"], ["id-0", "id-2"]]
    (letter,) = rig.letters()
    assert letter.kind == FailureKind.BAD_REQUEST.value and letter.item["id"] == "id-1"
    assert "BadJsonBody" in letter.reason
    assert rig.stats.retries[TRACK.value] == 0  # a resend is not a retry


@pytest.mark.parametrize("rig", [[(400, {"code": "BadParams", "msg": "no index"})]], indirect=True)
async def test_a_400_naming_nothing_is_bisected_down_to_single_items(rig: Rig) -> None:
    assert await rig.send(batch(4)) == []
    sizes = sorted(len(ids) for ids in sent_ids(rig.iterable))
    assert sizes == [1, 1, 1, 1, 2, 2, 4]
    assert [x.kind for x in rig.letters()] == [FailureKind.BAD_REQUEST.value] * 4


PARTIAL: Answer = (
    200,
    {"successCount": 2, "failCount": 1, "failedUpdates": {"invalidEmails": ["u1@invalid.test"]}},
)


@pytest.mark.parametrize("rig", [[PARTIAL]], indirect=True)
async def test_a_partial_200_dead_letters_only_the_named_item(rig: Rig) -> None:
    assert await rig.send(batch(3, bad=frozenset({1}))) == []
    (letter,) = rig.letters()
    assert letter.kind == FailureKind.INVALID_IDENTITY.value and letter.reason == "invalidEmails"
    assert rig.stats.delivered[TRACK.value] == 2 and sorted(rig.acks) == [0, 1, 2]


@pytest.mark.parametrize(
    "rig", [[(401, {"code": "BadApiKey", "msg": "Invalid API key"})]], indirect=True
)
async def test_a_refused_key_pauses_and_hands_every_item_back(rig: Rig) -> None:
    items = batch(3)
    back = await rig.send(items)
    assert back == items
    assert rig.sender.pause.reason is not None and "BadApiKey" in rig.sender.pause.reason
    assert not rig.acks and not rig.letters() and not rig.stats.delivered


@pytest.mark.parametrize("rig", [[(401, {"msg": "no"}), OK]], indirect=True)
async def test_the_next_accepted_request_resumes_a_paused_sync(rig: Rig) -> None:
    await rig.send(batch(1))
    assert rig.sender.pause.reason is not None
    assert await rig.send(batch(1)) == []
    assert rig.sender.pause.reason is None


@pytest.mark.parametrize("rig", [[(200, {})]], indirect=True)
async def test_the_last_error_and_latency_are_recorded(rig: Rig) -> None:
    rig.iterable.answers = [(500, json.dumps({"msg": "x"})), (200, {})]
    await rig.send(batch(1))
    assert rig.stats.last_error is not None and rig.stats.last_error.startswith(TRACK.value)
    assert rig.stats.responses[(TRACK.value, "500")] == 1
    assert rig.stats.responses[(TRACK.value, "200")] == 1
    assert sum(rig.stats.latency[TRACK.value].counts) == 2
