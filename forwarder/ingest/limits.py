"""Amplitude's size rules for one event: strings cut at 1024 characters, objects refused
past 40 levels of nesting."""

from __future__ import annotations

import re
from typing import Any

import msgspec

MAX_STRING_LENGTH = 1024
MAX_DEPTH = 40

# A string longer than MAX_STRING_LENGTH characters is a quote and then more than that
# many bytes with no quote, unless it holds an escaped one: bodies with neither hold no
# such string, and the walk that cuts them is skipped (the common case, found at C speed).
_LONG_RUN = re.compile(b'"[^"]{%d}' % (MAX_STRING_LENGTH + 1))


def may_hold_long_strings(body: bytes) -> bool:
    if b"\\" in body and b'\\"' in body:
        return True
    return _LONG_RUN.search(body) is not None


def cut_long_strings(event: msgspec.Struct) -> None:
    """Cut every string of the event (field, property value, list element) to
    MAX_STRING_LENGTH characters in place, as Amplitude and its SDKs do."""
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if value is None:
            continue
        if isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                setattr(event, name, value[:MAX_STRING_LENGTH])
        elif isinstance(value, (dict, list)):
            _cut_nested(value)


def _cut_nested(value: dict[str, Any] | list[Any]) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, str):
            if len(item) > MAX_STRING_LENGTH:
                value[key] = item[:MAX_STRING_LENGTH]  # type: ignore[index]
        elif isinstance(item, (dict, list)):
            _cut_nested(item)


# The fields that hold objects of the client's making, where the depth rule applies.
NESTED_FIELDS = ("event_properties", "user_properties", "groups", "group_properties")


_CONTAINERS = frozenset({dict, list})


def deeper_than(value: dict[str, Any] | list[Any], levels: int) -> bool:
    """Whether `value` nests more than `levels` objects or arrays (itself the first)."""
    if levels <= 0:
        return True
    children = value.values() if value.__class__ is dict else value
    # Most properties hold no object or array: found in C, with no Python loop.
    if _CONTAINERS.isdisjoint(map(type, children)):
        return False
    for child in children:
        if (child.__class__ is dict or child.__class__ is list) and deeper_than(child, levels - 1):
            return True
    return False
