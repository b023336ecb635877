"""A sync's pause: when a run of failures pauses it, one probe per interval, resuming."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from forwarder.config import SyncConfig
from forwarder.deliver.pause import Pause


def make_pause(waiting: int = 42, **delivery: Any) -> Pause:
    sync = msgspec.convert(
        {
            "name": "unit",
            "api_key": "k" * 32,
            "delivery": {
                "outage_pause_after_failures": 5,
                "outage_pause_after_seconds": 10,
                "outage_probe_seconds": 1,
                "outage_probe_max_seconds": 8,
                "request_timeout_seconds": 0.5,
                **delivery,
            },
        },
        SyncConfig,
    )
    return Pause(sync, waiting=lambda: waiting)


def test_many_failures_at_once_do_not_pause_a_sync() -> None:
    pause = make_pause()
    for _ in range(50):  # every request in flight failing in the same blip
        pause.failed("503", now=100.0)
    assert pause.reason is None


def test_a_few_failures_over_a_long_time_do_not_pause_a_sync() -> None:
    pause = make_pause()
    for t in (0.0, 20.0, 40.0, 60.0):
        pause.failed("503", now=t)
    assert pause.reason is None


def test_an_answer_ends_the_run() -> None:
    pause = make_pause()
    for t in range(4):
        pause.failed("503", now=float(t * 5))
    pause.answered(now=20.0)
    pause.failed("503", now=21.0)
    assert pause.reason is None and pause.failures == 1


def test_enough_failures_over_enough_time_pause_with_the_counts_in_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forwarder.sender")
    pause = make_pause()
    for t in (0.0, 1.0, 2.0, 5.0, 12.0):
        pause.failed("no answer (timeout or connection error)", now=t)
    assert pause.kind == "outage" and pause.reason is not None
    assert "5 failed requests in a row over 12 s" in pause.reason
    assert "connection error" in pause.reason
    (line,) = [r for r in caplog.records if "sync paused" in r.getMessage()]
    assert "42 items stay queued" in line.getMessage()
    assert line.__dict__["failures"] == 5 and line.__dict__["waiting"] == 42


def paused_at_12() -> Pause:
    pause = make_pause()
    for t in (0.0, 1.0, 2.0, 5.0, 12.0):
        pause.failed("503", now=t)
    assert pause.reason is not None
    return pause


def test_one_probe_per_interval_doubling_up_to_the_cap() -> None:
    pause = paused_at_12()
    assert pause.wait_before_send(12.5) == pytest.approx(0.5)
    probes = []
    now = 12.0
    for _ in range(200):  # bounded: 200 steps of 0.25 s
        now += 0.25
        if pause.wait_before_send(now) == 0.0:
            probes.append(now)
            pause.failed("503", now=now)  # the probe fails at once
    gaps = [round(b - a, 2) for a, b in zip(probes, probes[1:], strict=False)]
    assert probes[0] == 13.0
    assert gaps[:4] == [2.0, 4.0, 8.0, 8.0]  # doubling, capped at outage_probe_max_seconds
    assert pause.reason is not None and pause.failures == 5 + len(probes)


def test_a_slow_probe_is_never_overlapped_by_the_next() -> None:
    pause = make_pause(request_timeout_seconds=30)
    for t in (0.0, 1.0, 2.0, 5.0, 12.0):
        pause.failed("503", now=t)
    assert pause.wait_before_send(13.0) == 0.0  # the probe goes
    assert pause.wait_before_send(20.0) > 0  # its answer may take the whole timeout
    pause.failed("timeout", now=43.0)
    assert pause.wait_before_send(44.0) == pytest.approx(1.0)  # one interval after it


def test_the_first_answer_resumes_and_logs_how_long_and_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forwarder.sender")
    pause = paused_at_12()
    pause.failed("503", now=30.0)
    pause.answered(now=42.0)
    assert pause.reason is None and pause.kind is None and pause.failures == 0
    assert pause.wait_before_send(42.0) == 0.0
    (line,) = [r for r in caplog.records if "sync resumed" in r.getMessage()]
    assert "after 30 s paused (outage), 6 failed requests in the run" in line.getMessage()


def test_pause_and_resume_lines_are_rate_limited_when_iterable_flaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forwarder.sender")
    pause = make_pause(outage_pause_after_failures=1, outage_pause_after_seconds=0)
    for n in range(20):  # pauses and resumes every second for 20 s
        pause.failed("503", now=float(n))
        assert pause.reason is not None
        pause.answered(now=n + 0.5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("sync paused" in m for m in messages) == 1
    assert sum("sync resumed" in m for m in messages) == 1
    pause.failed("503", now=61.0)
    pause.answered(now=61.5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("19 more pause line(s) held back" in m for m in messages)


def test_a_refused_key_pauses_at_once_and_takes_over_an_outage() -> None:
    pause = paused_at_12()
    pause.refused("401 BadApiKey: Invalid API key", now=13.0)
    assert pause.kind == "refused" and pause.reason is not None
    assert pause.reason.startswith("Iterable refused the API key or URL: 401")
    # Its probes follow auth_retry_seconds (60 by default), not the outage's.
    assert pause.wait_before_send(14.0) == pytest.approx(59.0)
