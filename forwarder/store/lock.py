"""One daemon per storage.path: an exclusive, non-blocking flock on a lock file holding the PID.

Two daemons appending to one journal interleave their sequence numbers, and recovery
then throws most of both away; the lock makes the second one exit instead. The kernel
drops a flock when its holder dies, so a kill -9 leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from forwarder.errors import StorageLocked

LOCK_FILE = "forwarder.lock"


class StorageLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> StorageLock:
        """Lock `directory` (created if missing) or raise StorageLocked naming the holder."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StorageLocked(str(directory.resolve()), holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The PID is for the operator and for the refusal message; the flock is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
