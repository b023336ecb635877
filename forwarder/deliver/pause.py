"""A sync's pause: Iterable refuses its key or URL, or has been failing; items stay queued."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from forwarder.config import SyncConfig
from forwarder.deliver.notices import Notices
from forwarder.errors import mask

log = logging.getLogger("forwarder.sender")

PauseKind = Literal["refused", "outage"]

# Pause, resume and "still paused" lines: at most one of each per this many seconds, so a
# flapping Iterable or a long outage writes a handful of lines, not one per request.
NOTICE_SECONDS = 60.0


def _no_count() -> int:
    return 0


class Pause:
    """Paused or not, why, and when the next probe may go (one per interval, doubling).

    Two causes: Iterable refuses the key or URL (401/403/404/405, a redirect), which only
    an operator fixes, or an outage: a run of failed requests (no answer, 408/429/5xx, a
    2xx that is not Iterable's answer) of at least `outage_pause_after_failures` requests
    over at least `outage_pause_after_seconds`. Either way the items stay queued, one
    probe batch goes per interval, and the first request Iterable answers resumes.
    """

    def __init__(self, sync: SyncConfig, waiting: Callable[[], int] = _no_count) -> None:
        self._sync = sync
        # Items queued for the sync, for the log lines.
        self._waiting = waiting
        self.reason: str | None = None
        self.kind: PauseKind | None = None
        self.paused_at: float | None = None
        # The current run of failed requests: how many, since when (monotonic and wall).
        self.failures = 0
        self._run_started: float | None = None
        self._run_started_wall = 0.0
        self._interval = 0.0
        self._max_interval = 0.0
        self._probe_at = 0.0
        self._notices = Notices(NOTICE_SECONDS)

    def reconfigure(self, sync: SyncConfig) -> None:
        """A reload's settings; a new key or URL for a refused sync is probed at once."""
        refused_for = (self._sync.api_key, self._sync.endpoint_base)
        self._sync = sync
        if self.kind == "refused" and (sync.api_key, sync.endpoint_base) != refused_for:
            self._interval = sync.delivery.auth_retry_seconds / 2  # doubled by the probe
            self._max_interval = max(
                sync.delivery.auth_retry_seconds, sync.delivery.auth_retry_max_seconds
            )
            self._probe_at = 0.0

    # --- what the sender tells it ------------------------------------------------------

    def refused(self, why: str, now: float | None = None) -> None:
        """Iterable refused the key or URL: pause until a probe is answered."""
        now = time.monotonic() if now is None else now
        delivery = self._sync.delivery
        self._end_run()
        if self.kind != "refused":
            self._enter(
                "refused", now, delivery.auth_retry_seconds, delivery.auth_retry_max_seconds
            )
            held = self._notices.due("pause", now)
            if held is not None:
                log.error(
                    "Iterable refused the requests of API key %s: sync paused, %d items stay "
                    "queued (%s)%s",
                    mask(self._sync.api_key),
                    self._waiting(),
                    why,
                    _held_text(held, "pause"),
                    extra={"sync": self._sync.name, "waiting": self._waiting()},
                )
        else:
            self._probe_at = now + self._interval
        self.reason = f"Iterable refused the API key or URL: {why}"

    def failed(self, why: str, now: float | None = None) -> None:
        """A request failed as a whole for now; a long enough run of them pauses the sync."""
        now = time.monotonic() if now is None else now
        delivery = self._sync.delivery
        if self._run_started is None:
            self._run_started = now
            self._run_started_wall = time.time()
        self.failures += 1
        run_seconds = now - self._run_started
        if self.reason is not None:
            # A failed probe (or a request sent before the pause): wait a whole interval
            # from its answer, so a slow timeout never overlaps the next probe.
            self._probe_at = now + self._interval
            if self.kind == "outage":
                self.reason = self._outage_reason(run_seconds, why)
                # The pause line said it all for the first minute.
                quiet = now - (self.paused_at or now) < NOTICE_SECONDS
                held = None if quiet else self._notices.due("still", now)
                if held is not None:
                    log.warning(
                        "sync still paused: %d failed requests in %.0f s, %d items waiting "
                        "(last: %s)",
                        self.failures,
                        run_seconds,
                        self._waiting(),
                        why,
                        extra=self._counts(run_seconds),
                    )
            return
        if (
            self.failures < delivery.outage_pause_after_failures
            or run_seconds < delivery.outage_pause_after_seconds
        ):
            return
        self._enter("outage", now, delivery.outage_probe_seconds, delivery.outage_probe_max_seconds)
        self.reason = self._outage_reason(run_seconds, why)
        held = self._notices.due("pause", now)
        if held is not None:
            log.error(
                "Iterable is unreachable or failing: sync paused after %d failed requests in "
                "%.0f s, %d items stay queued, one probe every %g s up to %g s (last: %s)%s",
                self.failures,
                run_seconds,
                self._waiting(),
                delivery.outage_probe_seconds,
                delivery.outage_probe_max_seconds,
                why,
                _held_text(held, "pause"),
                extra=self._counts(run_seconds),
            )

    def answered(self, now: float | None = None) -> None:
        """Iterable answered a request (any answer about the data): resume, end the run."""
        if self.reason is not None:
            now = time.monotonic() if now is None else now
            paused_for = now - (self.paused_at or now)
            held = self._notices.due("resume", now)
            if held is not None:
                log.warning(
                    "Iterable answers again: sync resumed after %.0f s paused (%s), %d failed "
                    "requests in the run, %d items waiting%s",
                    paused_for,
                    self.kind,
                    self.failures,
                    self._waiting(),
                    _held_text(held, "resume"),
                    extra={**self._counts(paused_for), "paused_seconds": round(paused_for, 1)},
                )
            self.reason = None
            self.kind = None
            self.paused_at = None
        self._end_run()

    # --- what the batcher asks ------------------------------------------------------------

    def wait_before_send(self, now: float) -> float:
        """Seconds until a batch may go: 0 when not paused, or when a probe is due.

        A probe that goes doubles the interval (up to its cap) and sets the next probe no
        sooner than its answer can come, so only one probe is out at a time.
        """
        if self.reason is None:
            return 0.0
        if now < self._probe_at:
            return self._probe_at - now
        self._interval = min(self._interval * 2, self._max_interval)
        timeout = self._sync.delivery.request_timeout_seconds
        self._probe_at = now + max(self._interval, timeout)
        return 0.0

    # --- inside ---------------------------------------------------------------------------

    def _enter(self, kind: PauseKind, now: float, interval: float, max_interval: float) -> None:
        if self.paused_at is None:
            self.paused_at = now
        self.kind = kind
        self._interval = interval
        self._max_interval = max(interval, max_interval)
        self._probe_at = now + interval

    def _end_run(self) -> None:
        self.failures = 0
        self._run_started = None

    def _outage_reason(self, run_seconds: float, why: str) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._run_started_wall))
        return (
            f"Iterable unreachable or failing since {since}: {self.failures} failed requests "
            f"in a row over {run_seconds:.0f} s; last: {why}"
        )

    def _counts(self, seconds: float) -> dict[str, object]:
        return {
            "sync": self._sync.name,
            "waiting": self._waiting(),
            "failures": self.failures,
            "seconds": round(seconds, 1),
        }


def _held_text(held: int, what: str) -> str:
    return f" ({held} more {what} line(s) held back)" if held else ""
