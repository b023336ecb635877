"""CORS and beacon bodies on the ingest routes, on a real socket, as a browser sees them."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from forwarder.config import ServerConfig, parse_config
from forwarder.errors import ConfigError, StorageUnavailable
from forwarder.ingest.amplitude import Event
from forwarder.ingest.app import STATE_KEY, build_app
from forwarder.ingest.cors import (
    DEFAULT_ALLOWED_HEADERS,
    CorsPolicy,
    origin_problem,
    preflight_headers,
)
from tests.harness import serve

KEY = "amp-key-123"
PAGE = "http://127.0.0.1:5173"
OTHER = "http://127.0.0.1:6000"
ROUTES = ["/2/httpapi", "/batch", "/identify"]


class Sink:
    """Takes events, or refuses them (429), or fails storage (503), as a test sets."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refuse: str | None = None
        self.storage_down = False

    def refusal(self, count: int) -> str | None:
        return self.refuse

    async def accept(self, events: list[Event]) -> None:
        if self.storage_down:
            raise StorageUnavailable("disk full")
        self.events.extend(events)


class Browserish:
    """Sends what a browser would: an Origin on everything, preflights as OPTIONS."""

    def __init__(self, url: str, sink: Sink, session: aiohttp.ClientSession) -> None:
        self.url, self.sink, self.session = url, sink, session

    async def preflight(
        self, route: str, origin: str = PAGE, method: str = "POST", headers: str | None = None
    ) -> tuple[int, dict[str, str]]:
        sent = {"Origin": origin, "Access-Control-Request-Method": method}
        if headers is not None:
            sent["Access-Control-Request-Headers"] = headers
        async with self.session.options(self.url + route, headers=sent) as response:
            await response.read()
            return response.status, dict(response.headers)

    async def post(
        self,
        route: str,
        body: bytes,
        content_type: str = "application/json",
        origin: str = PAGE,
    ) -> tuple[int, dict[str, str]]:
        headers = {"Content-Type": content_type, "Origin": origin}
        async with self.session.post(self.url + route, data=body, headers=headers) as response:
            await response.read()
            return response.status, dict(response.headers)


async def _browserish(server: ServerConfig) -> AsyncIterator[Browserish]:
    sink = Sink()
    app = build_app(server, sink)
    app[STATE_KEY].ready = True
    runner, url = await serve(app)
    async with aiohttp.ClientSession() as session:
        yield Browserish(url, sink, session)
    await runner.cleanup()


@pytest.fixture
async def any_origin() -> AsyncIterator[Browserish]:
    async for client in _browserish(ServerConfig(api_keys=[KEY], max_body_bytes=5_000)):
        yield client


@pytest.fixture
async def narrowed() -> AsyncIterator[Browserish]:
    server = ServerConfig(api_keys=[KEY], max_body_bytes=5_000, allowed_origins=[PAGE])
    async for client in _browserish(server):
        yield client


def upload(*events: dict[str, Any], api_key: str = KEY) -> bytes:
    return msgspec.json.encode({"api_key": api_key, "events": list(events)})


def ev(insert_id: str = "e-1") -> dict[str, Any]:
    return {"event_type": "Viewed", "user_id": "user-00001", "insert_id": insert_id}


@pytest.mark.parametrize("route", ROUTES)
async def test_preflight_allows_what_the_browser_sdk_sends(
    any_origin: Browserish, route: str
) -> None:
    status, headers = await any_origin.preflight(route, headers="content-type,accept")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == "content-type,accept"
    assert int(headers["Access-Control-Max-Age"]) > 0


async def test_preflight_naming_no_headers_gets_the_sdk_defaults(any_origin: Browserish) -> None:
    status, headers = await any_origin.preflight("/2/httpapi")
    assert status == 204
    assert headers["Access-Control-Allow-Headers"] == DEFAULT_ALLOWED_HEADERS


async def test_narrowed_preflight_echoes_a_listed_origin_and_refuses_others(
    narrowed: Browserish,
) -> None:
    status, headers = await narrowed.preflight("/batch", headers="Content-Type")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert "Origin" in headers["Vary"]
    status, headers = await narrowed.preflight("/batch", origin=OTHER)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, headers = await narrowed.preflight("/batch", method="DELETE")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_every_answer_carries_the_origin_errors_included(any_origin: Browserish) -> None:
    sink = any_origin.sink
    answers = [await any_origin.post("/2/httpapi", upload(ev()))]
    answers.append(await any_origin.post("/2/httpapi", upload(ev(), api_key="wrong")))
    answers.append(await any_origin.post("/batch", upload(ev("x" * 6_000))))
    sink.refuse = "queues are full"
    answers.append(await any_origin.post("/2/httpapi", upload(ev())))
    sink.refuse, sink.storage_down = None, True
    answers.append(await any_origin.post("/batch", upload(ev())))
    answers.append(await any_origin.post("/identify", b"api_key=&identification=", "text/html"))
    async with any_origin.session.get(
        any_origin.url + "/2/httpapi", headers={"Origin": PAGE}
    ) as response:
        answers.append((response.status, dict(response.headers)))
    assert [status for status, _ in answers] == [200, 400, 413, 429, 503, 400, 405]
    assert all(h["Access-Control-Allow-Origin"] == "*" for _, h in answers), answers


async def test_narrowed_answers_vary_on_origin_and_name_only_listed_ones(
    narrowed: Browserish,
) -> None:
    narrowed.sink.refuse = "queues are full"
    status, headers = await narrowed.post("/2/httpapi", upload(ev()))
    assert status == 429
    assert headers["Access-Control-Allow-Origin"] == PAGE and headers["Vary"] == "Origin"
    status, headers = await narrowed.post("/2/httpapi", upload(ev()), origin=OTHER)
    assert status == 429
    assert "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"


async def test_routes_besides_ingest_stay_same_origin(any_origin: Browserish) -> None:
    async with any_origin.session.get(
        any_origin.url + "/healthz", headers={"Origin": PAGE}
    ) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_options_without_an_origin_is_no_preflight(any_origin: Browserish) -> None:
    async with any_origin.session.options(any_origin.url + "/2/httpapi") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("route", ["/2/httpapi", "/batch"])
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8"])
async def test_beacon_text_plain_bodies_count_as_json(
    any_origin: Browserish, route: str, content_type: str
) -> None:
    status, headers = await any_origin.post(route, upload(ev("beacon-1")), content_type)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert [e.insert_id for e in any_origin.sink.events] == ["beacon-1"]
    status, _ = await any_origin.post(route, b"{not json", content_type)
    assert status == 400 and len(any_origin.sink.events) == 1


def test_policy_answers() -> None:
    anyone = CorsPolicy.from_config(["*"])
    assert anyone.allow_origin(PAGE) == "*" and anyone.allow_origin(None) == "*"
    listed = CorsPolicy.from_config([PAGE])
    assert listed.allow_origin(PAGE) == PAGE and listed.allow_origin(OTHER) is None
    assert listed.allow_origin(None) is None
    nobody = CorsPolicy.from_config([])
    assert nobody.allow_origin(PAGE) is None


def test_a_header_list_that_is_not_tokens_is_not_echoed() -> None:
    request = {
        "Origin": PAGE,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x:evil",
    }
    allowed = preflight_headers(CorsPolicy.from_config(["*"]), request)
    assert allowed is not None
    assert allowed["Access-Control-Allow-Headers"] == DEFAULT_ALLOWED_HEADERS


@pytest.mark.parametrize(
    "origin",
    ["*", "http://127.0.0.1:5173", "https://shop.example.com", "http://[::1]:8000"],
)
def test_origins_a_config_may_list(origin: str) -> None:
    assert origin_problem(origin) is None


@pytest.mark.parametrize(
    "origin",
    [
        "https://shop.example.com/",
        "https://shop.example.com/page",
        "shop.example.com",
        "https://Shop.example.com",
        "https://shop.example.com:443",
        "http://shop.example.com:80",
        "",
    ],
)
def test_origins_a_config_may_not_list(origin: str) -> None:
    assert origin_problem(origin) is not None


BASE: dict[str, Any] = {
    "server": {"api_keys": ["amp"]},
    "syncs": [{"name": "one", "api_key": "it"}],
}


@pytest.mark.parametrize(
    ("origins", "key_path"),
    [
        (["https://a.example", "https://b.example/"], "server.allowed_origins[1]"),
        (["*", "https://a.example"], "server.allowed_origins"),
        ("*", "server.allowed_origins"),
    ],
)
def test_config_errors_name_the_origin(origins: Any, key_path: str) -> None:
    raw = copy.deepcopy(BASE)
    raw["server"]["allowed_origins"] = origins
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert error.value.path == key_path


def test_config_default_is_any_origin_and_a_list_narrows_it() -> None:
    assert parse_config(copy.deepcopy(BASE), env={}).server.allowed_origins == ["*"]
    raw = copy.deepcopy(BASE)
    raw["server"]["allowed_origins"] = [PAGE]
    assert parse_config(raw, env={}).server.allowed_origins == [PAGE]
