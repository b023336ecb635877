"""Log lines that repeat, written at most once per interval each, counting those held back."""

from __future__ import annotations

from collections.abc import Hashable


class Notices:
    """Which repeating log lines are due: one per key per `interval` seconds.

    An outage fails every request, probe and retry the same way; one line per request
    would bury the logs (and the disk) while saying nothing new. The line that is written
    says how many like it were held back since the last one.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def due(self, key: Hashable, now: float) -> int | None:
        """How many lines of `key` were held back when this one may be written, else None."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
