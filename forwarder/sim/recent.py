"""The last request bodies per endpoint, in a bounded ring, for `GET /_sim/requests`."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(slots=True)
class SentRequest:
    """One request as it arrived: when, what was answered, and its body (never its key)."""

    at: float  # time.time() at arrival
    endpoint: str
    status: int
    body: bytes


class RecentRequests:
    """Per endpoint the last `count` bodies, within `max_bytes` of bodies each.

    Both bounds, because a bulk body may be 4 MB: fifty of them per endpoint would cost
    200 MB of a long load run's memory for a debugging aid.
    """

    def __init__(self, count: int = 50, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self._rings: dict[str, deque[SentRequest]] = {}
        self._bytes: dict[str, int] = {}

    def add(self, endpoint: str, status: int, body: bytes, at: float | None = None) -> None:
        if self.count <= 0:
            return
        ring = self._rings.setdefault(endpoint, deque())
        ring.append(SentRequest(time.time() if at is None else at, endpoint, status, body))
        self._bytes[endpoint] = self._bytes.get(endpoint, 0) + len(body)
        while len(ring) > self.count or (len(ring) > 1 and self._bytes[endpoint] > self.max_bytes):
            self._bytes[endpoint] -= len(ring.popleft().body)

    def last(self, endpoint: str | None, limit: int) -> list[SentRequest]:
        """The newest `limit` requests of one endpoint (or of all), oldest first.

        An endpoint is its path under /api/ (`events/trackBulk`) or its last part
        (`trackBulk`).
        """
        if endpoint is None:
            found = [sent for ring in self._rings.values() for sent in ring]
            found.sort(key=lambda sent: sent.at)
        else:
            found = [
                sent
                for name, ring in self._rings.items()
                if endpoint in (name, name.rsplit("/", 1)[-1])
                for sent in ring
            ]
        return found[-limit:] if limit > 0 else []


def describe(sent: SentRequest) -> dict[str, Any]:
    """One request as `/_sim/requests` shows it: the body as JSON when it is JSON."""
    entry: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sent.at))
        + f".{int(sent.at % 1 * 1000):03d}Z",
        "endpoint": sent.endpoint,
        "status": sent.status,
        "bytes": len(sent.body),
    }
    try:
        entry["body"] = msgspec.json.decode(sent.body)
    except msgspec.DecodeError:
        entry["body_text"] = sent.body[:4096].decode("utf-8", "replace")
    return entry
