"""Reading numbers out of untrusted JSON values, the way people mean them."""

from __future__ import annotations

from typing import Any


def as_number(value: Any) -> float | None:
    """Numbers, and strings that spell one; never booleans (True is not 1 here)."""
    exact = as_exact_number(value)
    return None if exact is None else float(exact)


def as_exact_number(value: Any) -> int | float | None:
    """Like `as_number`, but an int stays an int ("3" is 3, not 3.0): for arithmetic."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
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
