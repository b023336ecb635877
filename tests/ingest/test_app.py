"""Ingest like Amplitude, on a real socket: answers, every refusal, and fuzzed bodies."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any, AsyncIterator

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.config import ServerConfig
from forwarder.ingest.amplitude import Event, RejectedRequest, decode_identify, decode_upload
from forwarder.ingest.app import STATE_KEY, build_app
from tests.harness import serve

KEY = "amp-key-123"
KEYS = frozenset({KEY})


class RecordingIntake:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refuse: str | None = None

    def refusal(self, count: int) -> str | None:
        return self.refuse

    async def accept(self, events: list[Event]) -> None:
        self.events.extend(events)


class Ingest:
    def __init__(
        self, url: str, intake: RecordingIntake, session: aiohttp.ClientSession, app: Any
    ) -> None:
        self.url, self.intake, self.session, self.app = url, intake, session, app

    async def post(
        self,
        route: str,
        body: bytes | str | dict[str, Any],
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = msgspec.json.encode(body) if isinstance(body, dict) else body
        async with self.session.post(
            self.url + route, data=data, headers={"Content-Type": content_type, **(headers or {})}
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


@pytest.fixture
async def ingest() -> AsyncIterator[Ingest]:
    intake = RecordingIntake()
    app = build_app(
        ServerConfig(api_keys=[KEY], max_body_bytes=50_000, max_events_per_request=20), intake
    )
    app[STATE_KEY].ready = True
    runner, url = await serve(app)
    async with aiohttp.ClientSession() as session:
        yield Ingest(url, intake, session, app)
    await runner.cleanup()


def ev(**fields: Any) -> dict[str, Any]:
    return {"event_type": "Purchase", "user_id": "user-00001", **fields}


@pytest.mark.parametrize("route", ["/2/httpapi", "/batch"])
async def test_success_answer(ingest: Ingest, route: str) -> None:
    body = msgspec.json.encode(
        {"api_key": KEY, "events": [ev(), ev(device_id="device-1", user_id=None)]}
    )
    status, answer = await ingest.post(route, body)
    assert status == 200
    assert answer["code"] == 200 and answer["events_ingested"] == 2
    assert (
        answer["payload_size_bytes"] == len(body)
        and answer["server_upload_time"] > 1_600_000_000_000
    )
    assert [e.event_type for e in ingest.intake.events] == ["Purchase", "Purchase"]


async def test_gzip_body(ingest: Ingest) -> None:
    body = gzip.compress(msgspec.json.encode({"api_key": KEY, "events": [ev()]}))
    status, answer = await ingest.post("/2/httpapi", body, {"Content-Encoding": "gzip"})
    assert status == 200 and answer["events_ingested"] == 1


async def test_corrupt_gzip_is_a_400(ingest: Ingest) -> None:
    status, answer = await ingest.post(
        "/2/httpapi", b"not gzip at all", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and answer["code"] == 400


async def test_identify_form_object_and_array(ingest: Ingest) -> None:
    one = json.dumps({"user_id": "user-00001", "user_properties": {"$set": {"email": "a@b.io"}}})
    many = json.dumps(
        [
            {"user_id": "user-00002", "user_properties": {"plan": "pro"}},
            {"device_id": "device-00003", "user_properties": {"$unset": {"x": "-"}}},
        ]
    )
    for identification in (one, many):
        form = aiohttp.FormData({"api_key": KEY, "identification": identification})
        async with ingest.session.post(ingest.url + "/identify", data=form) as response:
            assert response.status == 200 and await response.text() == "success"
    assert [e.event_type for e in ingest.intake.events] == ["$identify"] * 3
    assert ingest.intake.events[0].user_properties == {"$set": {"email": "a@b.io"}}


REFUSALS: list[tuple[str, Any, int, dict[str, Any]]] = [
    ("missing api_key", {"events": [ev()]}, 400, {"missing_field": "api_key"}),
    ("missing events", {"api_key": KEY}, 400, {"missing_field": "events"}),
    ("empty events", {"api_key": KEY, "events": []}, 400, {"missing_field": "events"}),
    (
        "missing event_type",
        {"api_key": KEY, "events": [ev(), {"user_id": "user-00001"}]},
        400,
        {"events_with_missing_fields": {"event_type": [1]}},
    ),
    (
        "no user_id nor device_id",
        {"api_key": KEY, "events": [{"event_type": "e"}, ev()]},
        400,
        {"events_with_missing_fields": {"user_id or device_id": [0]}},
    ),
    (
        "short user_id",
        {"api_key": KEY, "events": [ev(user_id="abc")]},
        400,
        {"events_with_invalid_id_lengths": {"user_id": [0]}},
    ),
    (
        "short device_id with options",
        {
            "api_key": KEY,
            "events": [ev(user_id=None, device_id="abcdefg")],
            "options": {"min_id_length": 10},
        },
        400,
        {"events_with_invalid_id_lengths": {"device_id": [0]}},
    ),
    (
        "placeholder id",
        {"api_key": KEY, "events": [ev(), ev(user_id="null")]},
        400,
        {"events_with_invalid_fields": {"user_id": [1]}},
    ),
    (
        "user_id of the wrong type",
        {"api_key": KEY, "events": [ev(), ev(), ev(user_id=12345)]},
        400,
        {"events_with_invalid_fields": {"user_id": [2]}},
    ),
    (
        "time of the wrong type",
        {"api_key": KEY, "events": [ev(time="noon"), ev(event_properties=[1])]},
        400,
        {"events_with_invalid_fields": {"time": [0], "event_properties": [1]}},
    ),
    (
        "event not an object",
        {"api_key": KEY, "events": [ev(), 7]},
        400,
        {"events_with_invalid_fields": {"event": [1]}},
    ),
    ("too many events", {"api_key": KEY, "events": [ev() for _ in range(21)]}, 413, {}),
]


@pytest.mark.parametrize(
    ("body", "status", "expected"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
async def test_refusals_are_amplitude_shaped(
    ingest: Ingest, body: dict[str, Any], status: int, expected: dict[str, Any]
) -> None:
    got, answer = await ingest.post("/2/httpapi", body)
    assert got == status
    assert answer["code"] == status and answer["error"]
    for key, value in expected.items():
        assert answer[key] == value
    assert ingest.intake.events == []  # one bad event rejects the request whole


async def test_unknown_api_key_is_refused_without_echoing_it(ingest: Ingest) -> None:
    secret = "someone-elses-key-0123456789"
    status, answer = await ingest.post("/2/httpapi", {"api_key": secret, "events": [ev()]})
    assert status == 400 and answer["error"].startswith("Invalid API key")
    assert secret not in json.dumps(answer)


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"{not json", "application/json", "Invalid JSON"),
        (b"[1, 2]", "application/json", ""),
        (b'"text"', "application/json", ""),
        (msgspec.json.encode({"api_key": KEY, "events": [ev()]}), "text/html", "Content-Type"),
        (
            msgspec.json.encode({"api_key": KEY, "events": [ev()]}),
            "application/x-www-form-urlencoded",
            "Content-Type",
        ),
        (b'{"api_key": 5, "events": []}', "application/json", "api_key"),
        (b'{"api_key": "' + KEY.encode() + b'", "events": {"a": 1}}', "application/json", "events"),
    ],
)
async def test_malformed_bodies_are_400s_with_a_message(
    ingest: Ingest, body: bytes, content_type: str, fragment: str
) -> None:
    status, answer = await ingest.post("/2/httpapi", body, content_type=content_type)
    assert status == 400 and answer["code"] == 400 and fragment in answer["error"]


async def test_body_over_the_cap_is_413(ingest: Ingest) -> None:
    huge = msgspec.json.encode(
        {"api_key": KEY, "events": [ev(event_properties={"pad": "x" * 60_000})]}
    )
    status, answer = await ingest.post("/batch", huge)
    assert status == 413 and answer["code"] == 413


async def test_gzip_bomb_is_413_after_decompression(ingest: Ingest) -> None:
    bomb = gzip.compress(
        msgspec.json.encode(
            {"api_key": KEY, "events": [ev(event_properties={"pad": "x" * 500_000})]}
        )
    )
    assert len(bomb) < 50_000
    status, answer = await ingest.post("/2/httpapi", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and answer["code"] == 413


@pytest.mark.parametrize(
    ("route", "method"), [("/2/httpapi", "GET"), ("/batch", "GET"), ("/identify", "PUT")]
)
async def test_wrong_method_is_405_in_json(ingest: Ingest, route: str, method: str) -> None:
    # GET /identify is Amplitude's Identify API with query parameters: not a wrong method.
    async with ingest.session.request(method, ingest.url + route) as response:
        assert response.status == 405
        answer = await response.json()
    assert answer["code"] == 405 and "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"identification": "{}"}, "missing_field"),
        ({"api_key": KEY}, "identification"),
        ({"api_key": KEY, "identification": "{nope"}, "Invalid identification"),
        (
            {
                "api_key": KEY,
                "identification": '{"user_id": "user-1", "user_properties": {"$set": {"a": 1}, "b": 2}}',
            },
            "mixes",
        ),
        (
            {"api_key": KEY, "identification": '{"user_properties": {"a": 1}}'},
            "user_id or device_id",
        ),
        ({"api_key": KEY, "identification": '{"user_id": 5}'}, "Invalid identification"),
    ],
)
async def test_identify_refusals(ingest: Ingest, fields: dict[str, str], fragment: str) -> None:
    async with ingest.session.post(ingest.url + "/identify", data=fields) as response:
        assert response.status == 400
        text = await response.text()
    assert json.loads(text)["code"] == 400 and fragment in text


async def test_bad_form_encoding_is_a_400(ingest: Ingest) -> None:
    status, answer = await ingest.post(
        "/identify", b"api_key=%ZZ&&==", content_type="application/x-www-form-urlencoded"
    )
    assert status == 400 and answer["code"] == 400


async def test_no_room_is_a_429_listing_every_event(ingest: Ingest) -> None:
    ingest.intake.refuse = "queues are full"
    status, answer = await ingest.post("/2/httpapi", {"api_key": KEY, "events": [ev(), ev(), ev()]})
    assert status == 429 and answer["code"] == 429 and answer["throttled_events"] == [0, 1, 2]
    assert ingest.intake.events == []


async def test_health_and_readiness(ingest: Ingest) -> None:
    async with ingest.session.get(ingest.url + "/healthz") as response:
        assert response.status == 200
    async with ingest.session.get(ingest.url + "/readyz") as response:
        assert response.status == 200
    ingest.app[STATE_KEY].ready = False
    async with ingest.session.get(ingest.url + "/readyz") as response:
        assert response.status == 503


# --- fuzzing --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "event_type",
        "user_id",
        "device_id",
        "time",
        "event_properties",
        "user_properties",
        "insert_id",
        "price",
        "quantity",
        "session_id",
        "groups",
        "plan",
        "location_lat",
        "country",
    ]
)
event_like = st.dictionaries(field_names, json_values, max_size=8)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(msgspec.json.encode),
    st.fixed_dictionaries(
        {
            "api_key": st.sampled_from([KEY, "", "nope", 5, None]),
            "events": st.lists(event_like, max_size=5),
        },
        optional={"options": json_values},
    ).map(msgspec.json.encode),
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_decoder_only_accepts_or_rejects(body: bytes) -> None:
    try:
        events = decode_upload(body, KEYS, 2000)
    except RejectedRequest as rejected:
        assert rejected.status in (400, 413) and rejected.body.code == rejected.status
    else:
        assert all(e.event_type and (e.user_id or e.device_id) for e in events)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.none(), st.text(max_size=50), json_values.map(lambda v: msgspec.json.encode(v).decode())
    )
)
def test_identify_decoder_only_accepts_or_rejects(identification: str | None) -> None:
    try:
        decode_identify(KEY, identification, KEYS, 2000)
    except RejectedRequest as rejected:
        assert rejected.status in (400, 413)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    route=st.sampled_from(["/2/httpapi", "/batch", "/identify"]),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain"]
    ),
)
def test_random_bodies_never_get_a_500(body: bytes, route: str, content_type: str) -> None:
    async def one() -> int:
        intake = RecordingIntake()
        app = build_app(ServerConfig(api_keys=[KEY]), intake)
        runner, url = await serve(app)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    url + route, data=body, headers={"Content-Type": content_type}
                ) as response:
                    await response.read()
                    return response.status
        finally:
            await runner.cleanup()

    status = asyncio.run(one())
    assert status in (200, 400, 413, 429), status
