"""Reading config.toml: `${VAR}` expansion, decoding, and msgspec's errors as key paths."""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from forwarder.config.checks import check_config
from forwarder.config.schema import Config
from forwarder.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: dict[str, str] | os._Environ[str], path: str = "") -> Any:
    """Replace `${VAR}` (or `${VAR:-default}`) in every string; an unset VAR names its path."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found:
                return found
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")


def _from_validation_error(error: msgspec.ValidationError) -> ConfigError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.syncs[0].x`" into a key-path error."""
    text = str(error)
    match = _MSGSPEC_PATH.search(text)
    path = match.group(1).lstrip(".") if match else ""
    message = text[: match.start()] if match else text
    message = message.replace("`", "")
    if message.startswith("Object contains unknown field "):
        field = message.removeprefix("Object contains unknown field ")
        return ConfigError(_join(path, field), "unknown key")
    if message.startswith("Object missing required field "):
        field = message.removeprefix("Object missing required field ")
        return ConfigError(_join(path, field), "required key is missing")
    if message.startswith("Invalid enum value "):
        allowed = _allowed_values(path)
        if allowed:
            given = message.removeprefix("Invalid enum value ")
            expected = ", ".join(f'"{value}"' for value in allowed)
            return ConfigError(path, f"invalid value {given}: expected one of {expected}")
    return ConfigError(path, message[0].lower() + message[1:] if message else "invalid value")


_PATH_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _allowed_values(path: str) -> tuple[Any, ...]:
    """The values of the Literal at a key path (`syncs[0].region`), else ()."""
    kind: Any = Config
    for match in _PATH_STEP.finditer(path):
        kind = _unwrap(kind)
        name, index = match.groups()
        if index is not None:
            args = typing.get_args(kind)
            kind = args[0] if typing.get_origin(kind) is list and args else None
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            fields = {info.name: info.type for info in msgspec.structs.fields(kind)}
            kind = fields.get(name)
        else:
            return ()
    kind = _unwrap(kind)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def _unwrap(kind: Any) -> Any:
    """The type under Annotated[...] and `X | None`."""
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if len(args) == 1 and typing.get_origin(kind) in (typing.Union, types.UnionType):
        return args[0]
    return kind


def parse_config(
    raw: dict[str, Any], env: dict[str, str] | os._Environ[str] | None = None
) -> Config:
    """Decode and check a parsed TOML document; raise ConfigError naming the key path."""
    expanded = expand_env(raw, os.environ if env is None else env)
    try:
        config = msgspec.convert(expanded, Config)
    except msgspec.ValidationError as error:
        raise _from_validation_error(error) from None
    check_config(config)
    return config


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("", f"cannot read {path}: {error.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path} is not valid TOML: {error}") from None
    return parse_config(raw, env)
