"""Counting a JSON array's items without building them: at most a cap's worth of views."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec


class _Overflow:
    """Stands for the item past the cap: decoding one means the array is too long."""


class _Overflowed(Exception):
    pass


def _raise_overflowed(type_: type, value: object) -> object:
    raise _Overflowed


class _AnyObject(msgspec.Struct):
    """Any JSON object, its fields skipped."""


@lru_cache(maxsize=8)
def _overflow_decoders(max_events: int) -> tuple[msgspec.json.Decoder[Any], ...]:
    """Decoders whose array type holds max_events raw items and then an `_Overflow`.

    msgspec checks a list's max_length only once the whole list is built, but stops a
    fixed-length tuple at its first extra item: so the count costs at most max_events
    small Raw views, however long the array. Shorter arrays fail the tuple's length
    check (a ValidationError), which here means "not too many".
    """
    items: Any = tuple.__class_getitem__((msgspec.Raw,) * max_events + (_Overflow,))
    events = msgspec.defstruct("_EventsCount", [("events", items | None, None)])
    upload = msgspec.json.Decoder(events, dec_hook=_raise_overflowed)
    identify = msgspec.json.Decoder(items | _AnyObject, dec_hook=_raise_overflowed)
    return upload, identify


def events_overflow(body: bytes | str, max_events: int, identify: bool = False) -> bool:
    """Whether the events array (or the identification array) has more than max_events."""
    decoder = _overflow_decoders(max_events)[1 if identify else 0]
    try:
        decoder.decode(body)
    except _Overflowed:
        return True
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        pass  # not too many (or no array at all); the typed decode names what is wrong
    return False
