"""Which dead letters an operator means (--reason, --since, --id), and their summary; pure."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from forwarder.store.dead_letters import DeadLetter

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_since(text: str, now: float) -> float:
    """Unix time from an ISO time ("2024-05-01T10:00", UTC unless it says) or a duration
    back from `now` ("90s", "15m", "2h", "7d", "1w"). ValueError names what is expected."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO time (2024-05-01T10:00:00Z) "
            "or a duration (90s, 15m, 2h, 7d, 1w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class LetterFilter:
    """Letters whose kind is `reason` or whose reason contains it, that failed at or
    after `since`, whose id starts with `id`; None matches anything."""

    reason: str | None = None
    since: float | None = None
    id: str | None = None

    @property
    def everything(self) -> bool:
        return self.reason is None and self.since is None and self.id is None

    def matches(self, letter: DeadLetter, letter_id: str) -> bool:
        if self.reason is not None:
            wanted = self.reason.lower()
            if (letter.kind or "").lower() != wanted and wanted not in letter.reason.lower():
                return False
        if self.since is not None and letter.time < self.since:
            return False
        return self.id is None or letter_id.startswith(self.id.lower())

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "since": self.since, "id": self.id}


@dataclass
class SyncSummary:
    """One sync's matching letters: how many of each kind, the oldest and newest."""

    sync: str
    by_kind: Counter[str] = field(default_factory=Counter)
    oldest: float | None = None
    newest: float | None = None
    unreadable: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def add(self, letter: DeadLetter) -> None:
        self.by_kind[letter.label] += 1
        first = letter.failed_first
        self.oldest = first if self.oldest is None else min(self.oldest, first)
        self.newest = letter.time if self.newest is None else max(self.newest, letter.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "total": self.total,
            "by_kind": dict(self.by_kind.most_common()),
            "oldest": iso(self.oldest),
            "newest": iso(self.newest),
            "unreadable": self.unreadable,
        }


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def letter_json(letter: DeadLetter, letter_id: str) -> dict[str, Any]:
    """A letter as `show --json` prints it: its id first, times in ISO as well."""
    return {
        "id": letter_id,
        "sync": letter.sync,
        "time": iso(letter.time),
        "first_failed_at": iso(letter.failed_first),
        "kind": letter.kind,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "endpoint": letter.endpoint,
        "item": letter.item,
    }
