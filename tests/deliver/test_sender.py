"""The sender on its own: one batch through HTTP, retries, splits, pauses and settlement.

Iterable is a small scripted aiohttp server on 127.0.0.1: each test lists the answers it
gives, in order, and reads back the requests it got.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from tests.harness import eventually, serve

TRACK = Endpoint.TRACK_BULK


@dataclass(frozen=True)
class Raw:
    """An answer given byte for byte, with its headers (not Iterable's JSON)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Answer = tuple[int, dict[str, Any] | str] | Raw


@dataclass
class ScriptedIterable:
    """Answers requests with `answers` in order (the last one repeats), records bodies."""

    answers: list[Answer]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # GETs of the page a redirect points to (a followed redirect shows up here).
    landings: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        answer = self.answers[min(len(self.bodies), len(self.answers)) - 1]
        if isinstance(answer, Raw):
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        status, body = answer
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    async def landing(self, request: web.Request) -> web.Response:
        self.landings += 1
        return web.json_response({})  # what a followed redirect's GET would be told


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
    url: str

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
    # The answers, or (the answers, delivery settings over the rig's own).
    param: list[Answer] | tuple[list[Answer], dict[str, Any]] = request.param
    answers, overrides = param if isinstance(param, tuple) else (param, {})
    iterable = ScriptedIterable(answers)
    app = web.Application()
    app.router.add_post("/api/events/trackBulk", iterable.handle)
    app.router.add_get("/landing", iterable.landing)
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
                **overrides,
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
        yield Rig(sender, iterable, stats, acks, letters_path, url)
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


# --- answers that are not Iterable's -----------------------------------------------------

HTML = Raw(200, b"<html><body>Sign in</body></html>", {"Content-Type": "text/html"})
TRUNCATED = Raw(
    200, b'{"successCount": 3, "failCount": 0, "failedUpd', {"Content-Type": "application/json"}
)
REAL: Answer = (200, {"successCount": 3, "failCount": 0})


@pytest.mark.parametrize(
    "rig", [[HTML, REAL], [TRUNCATED, REAL], [HTML, TRUNCATED, REAL]], indirect=True
)
async def test_a_2xx_that_is_not_iterables_answer_delivers_nothing_until_a_real_one(
    rig: Rig,
) -> None:
    items = batch(3)
    assert await rig.send(items) == []
    tries = len(rig.iterable.bodies)
    assert sent_ids(rig.iterable) == [["id-0", "id-1", "id-2"]] * tries and tries >= 2
    # Delivered once, by the real answer; never dead, never counted twice.
    assert rig.stats.delivered[TRACK.value] == 3 and not rig.stats.dead
    assert sorted(rig.acks) == [0, 1, 2]
    assert rig.stats.retries[TRACK.value] == 3 * (tries - 1)
    assert rig.stats.last_error is not None
    assert "200 without Iterable's JSON answer" in rig.stats.last_error


@pytest.mark.parametrize(
    "rig",
    [([HTML, TRUNCATED], {"max_attempts": 0, "outage_pause_after_failures": 50})],
    indirect=True,
)
async def test_nothing_is_delivered_while_the_2xx_answers_are_not_iterables(rig: Rig) -> None:
    items = batch(2)
    task = asyncio.create_task(rig.send(items))
    try:
        await eventually(lambda: len(rig.iterable.bodies) >= 6, timeout=10)
        assert rig.stats.delivered[TRACK.value] == 0 and not rig.acks and not rig.letters()
        assert all(q.attempts >= 5 for q in items)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    "rig", [[Raw(302, b"", {"Location": "/landing"}), (200, {})]], indirect=True
)
async def test_a_redirect_is_not_followed_and_pauses_naming_base_url(rig: Rig) -> None:
    items = batch(3)
    assert await rig.send(items) == items  # handed back, in order
    assert rig.iterable.landings == 0, "the redirect must not be followed as a GET"
    reason = rig.sender.pause.reason
    assert reason is not None and "base_url" in reason and "/landing" in reason
    assert rig.sender.pause.kind == "refused"
    assert not rig.acks and not rig.letters() and not rig.stats.delivered
    # The probe after the operator fixed base_url: delivered once, the sync resumed.
    assert await rig.send(items) == []
    assert rig.stats.delivered[TRACK.value] == 3 and rig.sender.pause.reason is None
    assert sorted(rig.acks) == [0, 1, 2]


# --- failure lists naming items that were never sent -------------------------------------

FOREIGN: Answer = (
    200,
    {
        "successCount": 1,
        "failCount": 3,
        "failedUpdates": {
            "invalidEmails": ["u1@invalid.test", "someone@else.test"],
            "notFoundEmails": ["ghost@else.test"],
        },
    },
)


@pytest.mark.parametrize("rig", [[FOREIGN, (500, {"msg": "not again"})]], indirect=True)
async def test_foreign_values_in_failure_lists_never_retry_the_batch(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="forwarder.sender")
    assert await rig.send(batch(3, bad=frozenset({1}))) == []
    assert len(rig.iterable.bodies) == 1  # one request: no whole-batch retry
    (letter,) = rig.letters()
    assert letter.item["id"] == "id-1" and letter.kind == FailureKind.INVALID_IDENTITY.value
    assert rig.stats.delivered[TRACK.value] == 2 and rig.stats.retries[TRACK.value] == 0
    assert rig.stats.last_error is not None and "not in the request" in rig.stats.last_error
    assert any("not in the request" in r.getMessage() for r in caplog.records)


# --- an outage ---------------------------------------------------------------------------

OUTAGE = {"max_attempts": 0, "outage_pause_after_failures": 3, "outage_pause_after_seconds": 0}


@pytest.mark.parametrize("rig", [([(503, "down")], OUTAGE)], indirect=True)
async def test_a_run_of_failures_pauses_and_hands_the_items_back_without_dead_letters(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="forwarder.sender")
    items = batch(3)
    assert await rig.send(items) == items
    assert len(rig.iterable.bodies) == 3  # outage_pause_after_failures
    pause = rig.sender.pause
    assert pause.kind == "outage" and pause.reason is not None
    assert "3 failed requests in a row" in pause.reason and "503" in pause.reason
    assert not rig.letters() and not rig.acks and all(q.attempts == 3 for q in items)
    paused = [r for r in caplog.records if "sync paused after 3 failed requests" in r.getMessage()]
    assert len(paused) == 1
    # Iterable is back: the probe is answered, the sync resumes, everything is delivered.
    rig.iterable.answers = [(200, {})]
    assert await rig.send(items) == []
    assert pause.reason is None and rig.stats.delivered[TRACK.value] == 3
    assert any("sync resumed" in r.getMessage() for r in caplog.records)


# Pausing is pushed out of reach here: this is about the retry bound alone.
NO_PAUSE = {"max_attempts": 0, "outage_pause_after_failures": 1000}


@pytest.mark.parametrize("rig", [([(503, "down")], NO_PAUSE)], indirect=True)
async def test_no_attempt_count_ends_an_outage_by_default(rig: Rig) -> None:
    items = batch(1)
    task = asyncio.create_task(rig.send(items))
    try:
        await eventually(lambda: len(rig.iterable.bodies) >= 20, timeout=20)
        assert not rig.letters() and not rig.acks and items[0].attempts >= 19
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


NOT_FOUND: Answer = (
    200,
    {"successCount": 0, "failCount": 1, "failedUpdates": {"notFoundEmails": ["u0@example.com"]}},
)


UNNAMED: Answer = (200, {"successCount": 0, "failCount": 1})


@pytest.mark.parametrize(
    "rig", [([UNNAMED], {"max_attempts": 0, "item_retry_attempts": 4})], indirect=True
)
async def test_item_level_retries_stay_bounded_when_attempts_are_not(rig: Rig) -> None:
    assert await rig.send(batch(1)) == []
    assert len(rig.iterable.bodies) == 4
    (letter,) = rig.letters()
    assert letter.kind == FailureKind.RETRIES_EXHAUSTED.value and "not named" in letter.reason
    assert rig.sender.pause.reason is None  # Iterable answered: not an outage


NOT_FOUND_SOON = {
    "max_attempts": 2,  # not-found retries are not attempts of an outage: no bound here
    "not_found_retry_seconds": 0.3,
    "not_found_backoff_max_seconds": 0.02,
}


@pytest.mark.parametrize("rig", [([NOT_FOUND], NOT_FOUND_SOON)], indirect=True)
async def test_a_user_not_found_is_retried_for_its_window_then_dead_as_user_not_found(
    rig: Rig,
) -> None:
    started = time.monotonic()
    assert await rig.send(batch(1)) == []
    assert time.monotonic() - started >= 0.3  # the whole window, not a count of tries
    assert len(rig.iterable.bodies) >= 3
    (letter,) = rig.letters()
    assert letter.kind == FailureKind.USER_NOT_FOUND.value
    assert "user not found" in letter.reason and rig.acks == [0]


@pytest.mark.parametrize("rig", [([NOT_FOUND, NOT_FOUND, OK], NOT_FOUND_SOON)], indirect=True)
async def test_a_user_that_becomes_visible_gets_its_event_delivered(rig: Rig) -> None:
    assert await rig.send(batch(1)) == []
    assert len(rig.iterable.bodies) == 3 and not rig.letters()
    assert rig.stats.delivered[TRACK.value] == 1 and rig.acks == [0]


FIELDS_LIMIT: Answer = (
    400,
    {"msg": "Project has too many unique fields", "code": "UniqueFieldsLimitExceeded"},
)


@pytest.mark.parametrize("rig", [[FIELDS_LIMIT]], indirect=True)
async def test_a_project_level_400_is_never_bisected(rig: Rig) -> None:
    assert await rig.send(batch(64)) == []
    assert len(rig.iterable.bodies) == 1
    letters = rig.letters()
    assert len(letters) == 64
    assert {x.kind for x in letters} == {FailureKind.UNIQUE_FIELDS_LIMIT.value}
    assert sorted(rig.acks) == list(range(64))


UNNAMED_400: Answer = (400, {"msg": "Invalid JSON body", "code": "BadJsonBody"})


@pytest.mark.parametrize("n", [2, 7, 64, 300])
@pytest.mark.parametrize("rig", [[UNNAMED_400]], indirect=True)
async def test_an_item_level_400_on_every_call_costs_about_2_log2_n_requests(
    rig: Rig, n: int
) -> None:
    assert await rig.send(batch(n)) == []
    extra = rig.sender.policy.bisect_extra
    assert len(rig.iterable.bodies) <= 1 + 2 * math.ceil(math.log2(n)) + extra
    letters = rig.letters()
    assert len(letters) == n and sorted(rig.acks) == list(range(n))  # none lost
    assert {x.kind for x in letters} == {FailureKind.BAD_REQUEST.value}
