"""The commented sample config shipped inside the package, and `forwarder init` writing it."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

# Owner read-write, group read (the daemon's group): the file may name keys' variables and
# hosts, and `init` is run as root for a daemon that runs as its own user.
MODE = 0o640


def sample_config() -> bytes:
    """The text of forwarder/config.toml as installed (the repository's config.toml)."""
    return resources.files("forwarder").joinpath("config.toml").read_bytes()


def write_sample_config(path: Path, force: bool = False) -> None:
    """Write the sample to `path`, creating its directory; whole or not at all.

    Raises FileExistsError when `path` exists and `force` is false.
    """
    if path.exists() and not force:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(sample_config())
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # A link fails if the path appeared meanwhile, where a rename would overwrite.
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
