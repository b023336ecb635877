"""What a config reload changes (pure), and the config file as read and hashed for it."""

from __future__ import annotations

import hashlib
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from forwarder.config import Config, SyncConfig, parse_config
from forwarder.errors import ConfigError
from forwarder.ops.snapshot import ConfigSnapshot

# The sections a running daemon cannot take over: its sockets and its storage are opened
# once, at start.
FIXED_SECTIONS = ("server", "storage")


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a new config changes, against the one in force."""

    # The config to put in force: the new one with the fixed sections kept as they were.
    effective: Config
    # Key paths of fixed sections the new file changes ("server.listen"): ignored until a
    # restart.
    needs_restart: list[str]
    added: list[str]
    removed: list[str]
    # Syncs that stay and whose routing or delivery settings differ.
    changed: list[str]

    @property
    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "; ".join(parts) or "no sync changed"


def differing_keys(old: msgspec.Struct, new: msgspec.Struct, at: str) -> list[str]:
    """Key paths of the fields that differ between two config sections, in declared order."""
    return [
        f"{at}.{name}" for name in old.__struct_fields__ if getattr(old, name) != getattr(new, name)
    ]


def enabled_syncs(config: Config) -> list[SyncConfig]:
    return [sync for sync in config.syncs if sync.enabled]


def diff_configs(old: Config, new: Config) -> ConfigChange:
    """The change from `old` (in force) to `new` (just read)."""
    needs_restart = [
        key
        for section in FIXED_SECTIONS
        for key in differing_keys(getattr(old, section), getattr(new, section), section)
    ]
    effective = msgspec.structs.replace(new, server=old.server, storage=old.storage)
    before = {sync.name: sync for sync in enabled_syncs(old)}
    after = {sync.name: sync for sync in enabled_syncs(effective)}
    return ConfigChange(
        effective=effective,
        needs_restart=needs_restart,
        added=[name for name in after if name not in before],
        removed=[name for name in before if name not in after],
        changed=[name for name, sync in after.items() if name in before and before[name] != sync],
    )


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A config file as read: the config it holds and the sha256 of its bytes."""

    config: Config
    sha256: str


def read_config_file(path: str | Path, env: dict[str, str] | None = None) -> ConfigFile:
    """Read, hash and check the file once (the hash is of the bytes the config came from);
    raise ConfigError naming the key path or the problem, as `load_config` does."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError("", f"cannot read {path}: {error.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError("", f"{path} is not UTF-8: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path} is not valid TOML: {error}") from None
    return ConfigFile(parse_config(raw, env), hashlib.sha256(data).hexdigest())


@dataclass(slots=True)
class ConfigSource:
    """Where the config in force came from, for /status and /metrics."""

    path: str
    sha256: str
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    refused: int = 0
    last_reload_error: str | None = None

    @classmethod
    def at_start(cls, path: str | Path) -> ConfigSource:
        """The file the daemon was started with. Hashed here, read a moment after the
        command line parsed it: an edit in between shows as a hash the next reload fixes."""
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            digest = ""
        return cls(str(path), digest)

    def loaded(self, sha256: str) -> None:
        self.sha256 = sha256
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_reload_error = None

    def refuse(self, error: str) -> None:
        self.refused += 1
        self.last_reload_error = error

    def snapshot(self) -> ConfigSnapshot:
        return ConfigSnapshot(
            path=self.path,
            sha256=self.sha256,
            loaded_at=self.loaded_at,
            reloads=self.reloads,
            refused=self.refused,
            last_reload_error=self.last_reload_error,
        )
