"""The base every config section derives from, and the `Positive` marker its checks read."""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

from forwarder.errors import ConfigError


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: a misspelt key is an error, not a silent default."""


class _PositiveMark:
    """The `Positive` marker; check_config finds it in a section's field types."""


_POSITIVE = _PositiveMark()
_Number = TypeVar("_Number", int, float)
# A setting that must be greater than 0. It is checked after decoding, by check_config,
# so a bad value is named by its key path in the same words as every other rule there.
Positive = Annotated[_Number, _POSITIVE]


def check_positive(section: Section, at: str) -> None:
    """The section's `Positive` fields, in the order they are declared."""
    for info in msgspec.structs.fields(section):
        if _POSITIVE in getattr(info.type, "__metadata__", ()):
            value = getattr(section, info.name)
            if value <= 0:
                raise ConfigError(f"{at}.{info.name}", f"must be greater than 0, got {value}")
