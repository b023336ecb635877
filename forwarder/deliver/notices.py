"""Log lines that repeat, written at most once per interval each, counting those held back."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Hashable, Iterable

from forwarder.errors import Failure, scrub


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


# An email address in a reason (Iterable's msg may quote one): never into a log line.
_EMAIL = re.compile(r"[^\s\"'<>(),;:]+@[^\s\"'<>(),;:]+")


def redact(text: str) -> str:
    """A reason as a log line may carry it: emails and key-like runs out, bounded."""
    return scrub(_EMAIL.sub("<email>", text))


class DeadLetterNotice:
    """The dead-letter line of one sync: at most one per `interval`, telling every letter.

    The first letters are told at once; those within the next `interval` are tallied by
    kind and told together when it ends (a timer), so a burst of dead letters writes two
    lines, and none goes untold. Counts, kinds and a redacted reason only: no payload.
    """

    def __init__(self, sync: str, where: str, interval: float, logger: logging.Logger) -> None:
        self.sync = sync
        self.where = where
        self.interval = interval
        self._log = logger
        self._kinds: Counter[str] = Counter()
        self._reason = ""
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, failures: Iterable[Failure]) -> None:
        for failure in failures:
            self._kinds[failure.kind.value] += 1
            self._reason = failure.detail
        if not self._kinds or self._timer is not None:
            return
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self.flush()
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._last + self.interval - now, self.flush)

    def flush(self) -> None:
        """Write the line for what is tallied (nothing when nothing is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._kinds:
            return
        count = sum(self._kinds.values())
        kinds = ", ".join(f"{kind}={n}" for kind, n in self._kinds.most_common())
        self._log.warning(
            "%d item(s) dead-lettered to %s: %s (last reason: %s)",
            count,
            self.where,
            kinds,
            redact(self._reason),
            extra={"sync": self.sync, "dead_letters": count, "kinds": dict(self._kinds)},
        )
        self._kinds.clear()
        self._last = time.monotonic()
