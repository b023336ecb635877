"""Whether storage takes writes: a storage error turns it off, a probe write turns it back on.

After a storage error /readyz says not ready and a probe file is written, fsynced and
removed in the journal's directory: at once, then once a second until that works. While
the probe fails too, ingest answers 503 up front, so clients back off instead of getting
500s; a one-off error the first probe disproves costs the one failed request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("forwarder.storage")

PROBE_FILE = ".probe"
# Room for a few group commits: a disk with less than this free is full for the journal.
PROBE_BYTES = 256 * 1024
PROBE_SECONDS = 1.0


def probe_write(directory: Path) -> None:
    """Write, fsync and remove a small file in `directory`; raises OSError when it can't."""
    path = directory / PROBE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = memoryview(bytes(PROBE_BYTES))
        while data:
            written = os.write(fd, data)
            if written <= 0:  # a full filesystem may answer 0 rather than ENOSPC
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()


class StorageHealth:
    """The storage's state as ingest and /readyz see it, and the probe that restores it."""

    def __init__(self, directory: Path | None, probe_seconds: float = PROBE_SECONDS) -> None:
        # None: nothing is written (durability = "memory"), so storage never fails.
        self.directory = directory
        self.probe_seconds = probe_seconds
        self.fault: str | None = None  # why storage failed, until a probe write works
        self.confirmed = False  # a probe failed too: ingest is refused up front
        self.faults = 0  # times storage went from writable to not
        self.since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    def failed(self, error: BaseException, where: str) -> None:
        """A write failed in `where`: refuse ingest until a probe write succeeds."""
        if self.directory is None:
            return
        detail = f"{where}: {_describe(error)}"
        if self.fault is None:
            self.faults += 1
            self.since = time.monotonic()
            log.error("storage unavailable (%s): ingest answers 503 until a write works", detail)
        self.fault = detail
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_loop(), name="storage-probe")

    @property
    def refusing(self) -> bool:
        """True while ingest is answered 503 without trying the disk."""
        return self.fault is not None and self.confirmed

    async def _probe_loop(self) -> None:
        assert self.directory is not None
        delay = 0.0
        while self.fault is not None:
            await asyncio.sleep(delay)
            delay = self.probe_seconds
            try:
                await asyncio.to_thread(probe_write, self.directory)
            except OSError as error:
                log.debug("storage probe failed: %s", error)
                self.confirmed = True
                continue
            down = time.monotonic() - (self.since or time.monotonic())
            log.warning("storage writable again after %.1f s (was: %s)", down, self.fault)
            self.fault = None
            self.since = None
            self.confirmed = False

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None


def _describe(error: BaseException) -> str:
    """One line for logs and /status: the OS error's name when there is one."""
    cause = error if isinstance(error, OSError) else error.__cause__
    if isinstance(cause, OSError) and cause.errno is not None:
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        return f"{name} ({cause.strerror})"
    return str(error) or type(error).__name__
