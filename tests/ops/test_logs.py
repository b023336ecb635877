"""Logs an operator can follow: text and JSON formats, and a daemon's retry, pause, resume,
dead-letter and debug lines, rate-limited and free of emails, keys and payloads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder import __version__
from forwarder.cli import build_parser
from forwarder.ops.logs import JsonFormatter, TextFormatter, choose_formatter, log_start
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import dead_letter_path, read_letters
from tests.harness import serve, upload_body
from tests.processes import DaemonProcess, free_port, listen_lines

AMPLITUDE = "amp-logs-key-5f1e"
ITERABLE = "iterable-secret-key-0123456789"  # DaemonProcess's ITERABLE_KEY
MARKER = "payload-marker-7731"


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "forwarder.sender", logging.WARNING, __file__, 1, "retrying %s", ("trackBulk",), None
    )
    record.created = 1_795_568_523.456  # 2026-11-25T01:02:03.456Z
    record.msecs = 456.0
    record.__dict__.update(extra)
    return record


def test_text_format_is_time_level_logger_fields_message() -> None:
    line = TextFormatter().format(
        _record(sync="iterable-local", endpoint="events/trackBulk", wait_seconds=0.25, why="a b")
    )
    assert line == (
        "2026-11-25T01:02:03.456Z WARNING forwarder.sender sync=iterable-local "
        'endpoint=events/trackBulk wait_seconds=0.25 why="a b" retrying trackBulk'
    )
    assert TextFormatter().format(_record()).endswith("forwarder.sender retrying trackBulk")


def test_json_format_keeps_the_extra_fields() -> None:
    entry = json.loads(JsonFormatter().format(_record(sync="s", items=3)))
    assert entry == {
        "time": "2026-11-25T01:02:03.456Z",
        "level": "warning",
        "logger": "forwarder.sender",
        "message": "retrying trackBulk",
        "sync": "s",
        "items": 3,
    }


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_format_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert isinstance(choose_formatter("auto", _Terminal()), TextFormatter)
    assert isinstance(choose_formatter("auto", io.StringIO()), JsonFormatter)
    assert isinstance(choose_formatter("json", _Terminal()), JsonFormatter)
    assert isinstance(choose_formatter("text", io.StringIO()), TextFormatter)
    with pytest.raises(ValueError):
        choose_formatter("xml", io.StringIO())
    parser = build_parser()
    assert parser.parse_args(["run"]).log_format == "auto"
    assert parser.parse_args(["run", "--log-format", "text"]).log_format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--log-format", "xml"])


# --- a daemon's lines ----------------------------------------------------------------------


def _write_config(tmp_path: Path, port: int, sim_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
{listen_lines(port)}
api_keys = ["{AMPLITUDE}"]
drain_timeout_seconds = 10

[storage]
path = "{tmp_path / "var"}"
durability = "journal"

[[syncs]]
name = "logs-test"
api_key = "${{ITERABLE_KEY}}"
base_url = "{sim_url}"

[syncs.events]
event_properties = ["sku"]

[syncs.users]
user_properties = ["plan"]

[syncs.delivery]
linger_ms = 20
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.3
outage_pause_after_failures = 8
outage_pause_after_seconds = 1.0
outage_probe_seconds = 0.2
outage_probe_max_seconds = 0.4
"""
    )
    return path


def _events(emails: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "user_id": f"user-{n}-{email.split('@')[0]}",
            "event_type": "purchase",
            "insert_id": f"logs-{n}-{time.monotonic_ns()}",
            "event_properties": {"sku": MARKER},
            "user_properties": {"email": email, "plan": MARKER},
        }
        for n, email in enumerate(emails)
    ]


async def _send(url: str, events: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/2/httpapi",
            data=upload_body(events, AMPLITUDE),
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def _until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]


def _assert_no_secrets(daemon: DaemonProcess, emails: list[str]) -> None:
    text = daemon.output()
    for secret in (MARKER, ITERABLE, AMPLITUDE, *emails):
        assert secret not in text, secret


async def test_retries_pause_and_resume_are_logged_rate_limited(tmp_path: Path) -> None:
    sim_config = SimulatorConfig(api_keys=frozenset({ITERABLE}), error_rate=1.0)
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(sim_config, state))
    port = free_port()
    daemon = await DaemonProcess(_write_config(tmp_path, port, sim_url), port).start()
    emails = ["alice@example.com", "bob@example.com"]
    try:
        await _send(daemon.url, _events(emails))
        await _until(lambda: "sync paused after" in daemon.output())
        failed = sum(n for (_, status), n in state.statuses.items() if status == 500)
        sim_config.error_rate = 0.0
        await _until(lambda: len(state.events) == len(emails))
        await _until(lambda: "sync resumed after" in daemon.output())
    finally:
        await daemon.stop()
        await runner.cleanup()

    lines = _lines(daemon)
    start = lines[0]
    assert start["message"] == "forwarder starting" and len(start["config_sha256"]) == 64
    retries = [line for line in lines if line["message"].startswith("retrying ")]
    # Many failed requests, one retry line per endpoint (30 s apart at most once each).
    assert failed >= 8
    assert 1 <= len(retries) <= 2, retries
    assert len({line["endpoint"] for line in retries}) == len(retries)
    for line in retries:
        assert line["sync"] == "logs-test" and line["level"] == "warning"
        assert "HTTP 500" in line["message"] or "500 GenericError" in line["message"]
        assert line["attempt"] >= 1 and line["wait_seconds"] > 0 and line["items"] >= 1
    assert [line["level"] for line in lines if "sync paused after" in line["message"]] == ["error"]
    assert len([line for line in lines if "sync resumed after" in line["message"]]) == 1
    _assert_no_secrets(daemon, emails)


async def test_dead_letters_and_debug_requests_are_logged(tmp_path: Path) -> None:
    state = SimulatorState()
    runner, sim_url = await serve(
        build_simulator_app(SimulatorConfig(api_keys=frozenset({ITERABLE})), state)
    )
    port = free_port()
    config = _write_config(tmp_path, port, sim_url)
    daemon = await DaemonProcess(config, port, log_level="debug").start()
    # Iterable refuses these users and their events (invalidEmails): dead letters.
    emails = [f"refused{n}@invalid.test" for n in range(6)]
    letters = dead_letter_path(str(tmp_path / "var"), "logs-test")
    try:
        await _send(daemon.url, _events(emails[:3]))
        await _until(lambda: letters.exists() and len(list(read_letters(letters))) >= 6)
        await _send(daemon.url, _events(emails[3:]))  # within 30 s: tallied, told at stop
        await _until(lambda: len(list(read_letters(letters))) >= 12)
    finally:
        await daemon.stop()
        await runner.cleanup()

    lines = _lines(daemon)
    told = [line for line in lines if "item(s) dead-lettered to" in line["message"]]
    assert 1 <= len(told) <= 2, told  # the first at once, the rest in one line at stop
    assert sum(line["dead_letters"] for line in told) == len(list(read_letters(letters))) == 12
    assert all(line["sync"] == "logs-test" and line["kinds"] for line in told)
    assert "invalid" in told[0]["message"]
    requests = [line for line in lines if line["level"] == "debug" and "POST " in line["message"]]
    assert requests and all(line["sync"] == "logs-test" for line in requests)
    assert any(
        re.fullmatch(r"POST events/trackBulk: \d+ items, \d+ bytes, 200 in \d+ ms", line["message"])
        for line in requests
    )
    _assert_no_secrets(daemon, emails)
    assert sum(state.failed.values()) == 12  # Iterable (the simulator) refused each item


def test_start_line_names_version_config_and_its_sha256_then_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[server]\n")
    caplog.set_level(logging.INFO, logger="forwarder.daemon")
    log_start(str(config), ["server.api_keys[0]: 'local-dev-key' is the shipped development key"])
    start, warning = caplog.records
    assert start.getMessage() == "forwarder starting"
    assert start.__dict__["config"] == str(config.resolve())
    assert start.__dict__["config_sha256"] == hashlib.sha256(b"[server]\n").hexdigest()
    assert start.__dict__["version"] == __version__
    assert warning.levelno == logging.WARNING and "local-dev-key" in warning.getMessage()
