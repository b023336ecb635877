"""Which items of a batch a 400 names, and the siblings that break the same rule (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from forwarder.deliver.answers import ErrorResponse
from forwarder.iterable import Endpoint, Item, TrackEvent, UpdateEmail


def named_indexes(error: ErrorResponse, endpoint: Endpoint, count: int) -> list[int]:
    """Indexes of the batch an error names, like "obj.events[1].createdAt" or "users[3]".

    `params` is searched first (its keys and string values, nested); `msg` only when
    params names nothing. Indexes outside the batch are ignored, as are paths into the
    other endpoint's list.
    """
    pattern = _INDEX_PATTERNS[endpoint]
    found: set[int] = set()
    for text in _texts(error.params):
        found.update(int(m.group(1)) for m in pattern.finditer(text))
    if not found and error.msg:
        found.update(int(m.group(1)) for m in pattern.finditer(error.msg))
    return sorted(i for i in found if i < count)


def same_type_siblings(error: ErrorResponse, endpoint: Endpoint, items: Sequence[Item]) -> set[int]:
    """Items that break the same field-type rule as a named one.

    Iterable fixes a dataFields field's type per event name (events) or per project
    (users), and a 400 RequestFieldsTypesMismatched names one offender, like
    "obj.events[3].dataFields.price". Every item of the batch with the same event name
    and the same JSON type in that field fails for the same reason.
    """
    pattern = _FIELD_PATTERNS[endpoint]
    kinds: set[tuple[str | None, str, str]] = set()
    for text in _texts(error.params):
        for match in pattern.finditer(text):
            index, field = int(match.group(1)), match.group(2)
            named = items[index] if index < len(items) else None
            if named is not None and not isinstance(named, UpdateEmail):
                fields = named.dataFields or {}
                if field in fields:
                    kinds.add((_kind_owner(named), field, _json_kind(fields[field])))
    if not kinds:
        return set()
    siblings = set()
    for index, item in enumerate(items):
        if isinstance(item, UpdateEmail):
            continue
        fields = item.dataFields or {}
        owner = _kind_owner(item)
        for kind_owner, field, kind in kinds:
            if owner == kind_owner and field in fields and _json_kind(fields[field]) == kind:
                siblings.add(index)
    return siblings


def _kind_owner(item: Item) -> str | None:
    return item.eventName if isinstance(item, TrackEvent) else None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    return type(value).__name__


_FIELD_PATTERNS = {
    endpoint: re.compile(
        r"(?<![A-Za-z0-9_])" + endpoint.list_key + r"\[(\d+)\]\.dataFields\.([A-Za-z0-9_$\-]+)"
    )
    for endpoint in Endpoint
}

_INDEX_PATTERNS = {
    endpoint: re.compile(r"(?<![A-Za-z0-9_])" + endpoint.list_key + r"\[(\d+)\]")
    for endpoint in Endpoint
}


def _texts(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string in a params value: dict keys and values, list elements, nested."""
    if depth > 4:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield str(key)
            yield from _texts(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            yield from _texts(inner, depth + 1)
