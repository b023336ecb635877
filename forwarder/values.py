"""Reading numbers out of untrusted JSON values, the way people mean them."""

from __future__ import annotations

from typing import Any


def as_number(value: Any) -> float | None:
    """Numbers, and strings that spell one; never booleans (True is not 1 here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def as_integer(value: Any) -> int | None:
    """An int from an int, an integral float, or a string that spells one; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            number = as_number(value)
            return int(number) if number is not None and number.is_integer() else None
    return None
