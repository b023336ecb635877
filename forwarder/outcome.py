"""Reading Iterable's answer to one bulk request into a fate per item (pure, no I/O)."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from forwarder.iterable import Endpoint, Item, TrackEvent

# Failure lists worth retrying: right after a user's bulkUpdate, Iterable may not have made
# the user visible to trackBulk yet (its bulk endpoints are processed asynchronously), so
# notFound* on events is retried a bounded number of times before it is dead-lettered.
RETRYABLE_LISTS = frozenset({"notFoundEmails", "notFoundUserIds"})
# Everything else names data Iterable will never take as sent: invalid*, forgotten*
# (GDPR), conflict*, invalidData*, disallowed event names.
_PARAMS_INDEX = re.compile(r"(?:^|\.)(?:events|users)\[(\d+)\]")


@dataclass
class Outcome:
    delivered: list[int] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    resend: list[int] = field(default_factory=list)
    split: bool = False
    retry_after: float | None = None
    auth_failure: str | None = None


class ErrorBody(msgspec.Struct):
    msg: str | None = None
    code: str | None = None
    params: Any = None


_error_decoder = msgspec.json.Decoder(ErrorBody)
_any_decoder = msgspec.json.Decoder()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    value = None
    for key, text in headers.items():
        if key.lower() == "retry-after":
            value = text.strip()
            break
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _error(body: bytes) -> ErrorBody:
    try:
        return _error_decoder.decode(body)
    except msgspec.DecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return ErrorBody(msg=text or None)


def _describe(status: int, error: ErrorBody) -> str:
    parts = [str(status)]
    if error.code:
        parts.append(error.code)
    return " ".join(parts) + (f": {error.msg}" if error.msg else "")


def _named_index(params: Any, count: int) -> int | None:
    """The item a 400's params point at, like "obj.events[1].createdAt"."""
    texts: list[str] = []
    if isinstance(params, str):
        texts.append(params)
    elif isinstance(params, Mapping):
        texts.extend(str(k) for k in params)
        texts.extend(str(v) for v in params.values())
    elif isinstance(params, list):
        texts.extend(str(v) for v in params)
    for text in texts:
        match = _PARAMS_INDEX.search(text)
        if match and int(match.group(1)) < count:
            return int(match.group(1))
    return None


def _failure_lists(answer: Any) -> dict[str, list[Any]]:
    """Every list of failed identities, top level or under failedUpdates."""
    lists: dict[str, list[Any]] = {}
    if not isinstance(answer, dict):
        return lists
    sources = [answer]
    if isinstance(answer.get("failedUpdates"), dict):
        sources.append(answer["failedUpdates"])
    for source in sources:
        for name, value in source.items():
            if value and isinstance(value, list) and name not in ("createdFields", "filteredOutFields"):
                if name.startswith("noOp"):
                    continue  # no-op updates are not failures
                lists.setdefault(name, []).extend(value)
    return lists


def read_outcome(
    endpoint: Endpoint,
    status: int | None,
    headers: Mapping[str, str],
    body: bytes,
    items: Sequence[Item],
) -> Outcome:
    everything = list(range(len(items)))
    if status is None or status == 408 or status == 429 or status >= 500:
        return Outcome(retry=everything, retry_after=parse_retry_after(headers))
    if status in (401, 403):
        error = _error(body)
        return Outcome(auth_failure=_describe(status, error))
    if status == 400:
        error = _error(body)
        named = _named_index(error.params, len(items))
        why = _describe(status, error)
        if named is not None:
            return Outcome(dead=[(named, why)], resend=[i for i in everything if i != named])
        if len(items) == 1:
            return Outcome(dead=[(0, why)])
        return Outcome(split=True)
    if status == 409:
        error = _error(body)
        if len(items) == 1:
            return Outcome(dead=[(0, _describe(status, error))])
        return Outcome(split=True)
    if status == 413 and len(items) > 1:
        return Outcome(split=True)
    if status != 200:
        # Any other answer is about the request itself: never retried forever, never
        # dropped silently.
        why = _describe(status, _error(body))
        return Outcome(dead=[(i, why) for i in everything])
    return _read_success(endpoint, body, items)


def _read_success(endpoint: Endpoint, body: bytes, items: Sequence[Item]) -> Outcome:
    try:
        answer = _any_decoder.decode(body) if body.strip() else {}
    except msgspec.DecodeError:
        # A 200 we cannot read: Iterable took the request; nothing names a failure.
        answer = {}
    lists = _failure_lists(answer)
    if not lists:
        return Outcome(delivered=list(range(len(items))))
    by_email: dict[str, list[int]] = {}
    by_user_id: dict[str, list[int]] = {}
    by_event_name: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.email:
            by_email.setdefault(item.email.lower(), []).append(index)
        if item.userId:
            by_user_id.setdefault(item.userId, []).append(index)
        if isinstance(item, TrackEvent):
            by_event_name.setdefault(item.eventName, []).append(index)
    fate: dict[int, tuple[bool, str]] = {}  # index -> (retry?, reason)
    for name, values in lists.items():
        retry = name in RETRYABLE_LISTS and endpoint is Endpoint.TRACK_BULK
        for value in values:
            if not isinstance(value, str):
                continue
            if name == "disallowedEventNames":
                hits = by_event_name.get(value, [])
            elif "Email" in name:
                hits = by_email.get(value.lower(), [])
            elif "UserId" in name:
                hits = by_user_id.get(value, [])
            else:
                hits = by_email.get(value.lower(), []) + by_user_id.get(value, [])
            for index in hits:
                # A permanent failure wins over a retryable one for the same item.
                if index not in fate or (fate[index][0] and not retry):
                    fate[index] = (retry, name)
    outcome = Outcome()
    for index in range(len(items)):
        if index not in fate:
            outcome.delivered.append(index)
        elif fate[index][0]:
            outcome.retry.append(index)
        else:
            outcome.dead.append((index, fate[index][1]))
    return outcome
