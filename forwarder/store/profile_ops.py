"""Amplitude's user-property operations on one profile dict (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwarder.values import as_exact_number

_MISSING = object()
# Amplitude applies one identify's operations in this fixed order, whatever their order in
# the JSON: clear first, then removals, then the writes (its docs' "Operation order").
OPERATION_ORDER = (
    "$clearAll",
    "$unset",
    "$setOnce",
    "$set",
    "$add",
    "$append",
    "$prepend",
    "$preInsert",
    "$postInsert",
    "$remove",
)


def _as_list(value: Any) -> list[Any]:
    if value is _MISSING or value is None:
        return []
    if isinstance(value, list):
        return list(value)
    return [value]


def _values(argument: Any) -> list[Any]:
    return argument if isinstance(argument, list) else [argument]


def _apply(profile: dict[str, Any], op: str, key: str, argument: Any) -> None:
    current = profile.get(key, _MISSING)
    if op == "$set":
        profile[key] = argument
    elif op == "$setOnce":
        if current is _MISSING:
            profile[key] = argument
    elif op == "$unset":
        profile.pop(key, None)
    elif op == "$add":
        increment = as_exact_number(argument)
        if increment is None:
            return
        if current is _MISSING:
            profile[key] = increment
        else:
            base = as_exact_number(current) if not isinstance(current, str) else None
            if base is not None:
                profile[key] = base + increment
    elif op in ("$append", "$prepend"):
        values = _values(argument)
        existing = _as_list(current)
        profile[key] = existing + values if op == "$append" else values + existing
    elif op in ("$preInsert", "$postInsert"):
        existing = _as_list(current)
        fresh = [v for v in _values(argument) if v not in existing]
        if not fresh and current is not _MISSING:
            return
        profile[key] = existing + fresh if op == "$postInsert" else fresh + existing
    elif op == "$remove":
        if current is _MISSING:
            return
        drop = _values(argument)
        profile[key] = [v for v in _as_list(current) if v not in drop]


_ORDER_INDEX = {op: index for index, op in enumerate(OPERATION_ORDER)}


def apply_user_properties(profile: dict[str, Any], update: Mapping[str, Any]) -> set[str]:
    """Apply one `user_properties` object in place; the names whose value changed.

    Plain keys act as `$set`. Unknown operations and operations whose value is not an
    object are ignored: this runs on untrusted input and must never raise.
    """
    if not update:
        return set()
    # Old values of the keys touched, to tell a real change from a rewrite of the same
    # value (Send Users only fires on real changes).
    old: dict[str, Any] = {}
    ops: list[tuple[int, str, Any]] = []
    plain: list[tuple[str, Any]] = []
    for key, argument in update.items():
        if not isinstance(key, str):
            continue
        if key.startswith("$"):
            index = _ORDER_INDEX.get(key)
            if index is not None:
                ops.append((index, key, argument))
        else:
            plain.append((key, argument))
    if plain:
        ops.append((_ORDER_INDEX["$set"], "$set", dict(plain)))
    if len(ops) > 1:
        ops.sort(key=lambda op: op[0])
    for _, op, argument in ops:
        if op == "$clearAll":
            for key, value in profile.items():
                old.setdefault(key, value)
            profile.clear()
            continue
        if not isinstance(argument, Mapping):
            continue
        for key, value in argument.items():
            if not isinstance(key, str):
                continue
            if key not in old:
                old[key] = profile.get(key, _MISSING)
            _apply(profile, op, key, value)
    return {key for key, before in old.items() if profile.get(key, _MISSING) != before}
