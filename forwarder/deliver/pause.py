"""A sync's pause: Iterable refused its key or URL, so it keeps its items and probes."""

from __future__ import annotations

import logging
import time

from forwarder.config import SyncConfig
from forwarder.errors import mask

log = logging.getLogger("forwarder.sender")


class Pause:
    """Paused or not, why, and when the next probe may go (one per interval, doubling)."""

    def __init__(self, sync: SyncConfig) -> None:
        self._sync = sync
        self.reason: str | None = None
        self._interval = sync.delivery.auth_retry_seconds
        self._probe_at = 0.0

    def pause(self, why: str) -> None:
        if self.reason is None:
            log.error(
                "Iterable refused the requests of API key %s: sync paused, items stay queued (%s)",
                mask(self._sync.api_key),
                why,
                extra={"sync": self._sync.name},
            )
        else:
            self._interval = min(self._interval * 2, self._sync.delivery.auth_retry_max_seconds)
        self.reason = f"Iterable refused the API key or URL: {why}"
        self._probe_at = time.monotonic() + self._interval

    def resume(self) -> None:
        if self.reason is None:
            return
        log.warning(
            "Iterable accepts the API key again: sync resumed", extra={"sync": self._sync.name}
        )
        self.reason = None
        self._interval = self._sync.delivery.auth_retry_seconds

    def wait_before_send(self, now: float) -> float:
        """Seconds until a batch may go: 0 when not paused, or when a probe is due (then
        the next probe is one interval away, so only one batch goes per interval)."""
        if self.reason is None:
            return 0.0
        if now < self._probe_at:
            return self._probe_at - now
        self._probe_at = now + self._interval
        return 0.0
