"""The file journal: framed records in segments, group-commit fsync, checkpoints, recovery.

A record is written and fsynced before its request is answered 200. A write that fails
(disk full, read-only, I/O error) is cut back to the last whole frame and its requests
are refused, so nothing is ever appended after a torn frame. Segments roll at
`segment_bytes`; a segment whose records are all at or below the checkpoint is deleted.
Recovery skips damaged bytes and keeps every valid frame after them; the damaged bytes
are copied aside, never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from forwarder.errors import LogClosed, StorageUnavailable
from forwarder.store.framing import Damage, encode_frame, scan_frames
from forwarder.store.log import LogStats, ProgressReport
from forwarder.store.progress import Progress

log = logging.getLogger("forwarder.journal")

_SEGMENT_PREFIX = "segment-"
_SEGMENT_SUFFIX = ".log"
_CHECKPOINT = "checkpoint"


@dataclass(slots=True)
class _Pending:
    seq: int
    frame: bytes
    future: asyncio.Future[int]


def _os_error(error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{name} ({error.strerror})" if name else str(error)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The durable log on local files: appends with group-commit fsync, recovery, checkpoints."""

    durable = True

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int,
        fsync: bool = True,
        damaged_directory: Path | None = None,
    ) -> None:
        self.directory = directory
        # Where recovery copies damaged bytes; the daemon puts it under storage.path.
        self.damaged_directory = damaged_directory or directory / "damaged"
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.last_seq = 0
        self.progress = Progress(0)
        self.recovery_problems: list[str] = []
        self.recovery_skipped_bytes = 0
        self.write_failures = 0
        self.disk_bytes = 0
        self.commits = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._fd: int | None = None
        self._active_bytes = 0  # the active segment's size up to its last whole frame
        self._torn = False  # bytes past _active_bytes may be on disk: cut before writing
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._saved_checkpoint = 0
        self._closed = False

    # --- recovery ----------------------------------------------------------------------

    async def recover(self, progress: ProgressReport | None = None) -> list[tuple[int, bytes]]:
        """Read what is after the checkpoint (in seq order) and get ready to append."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._open_sync, progress
        )

    def _open_sync(self, progress: ProgressReport | None) -> list[tuple[int, bytes]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = self._read_checkpoint()
        found = sorted(
            (int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), p)
            for p in self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
        )
        replay: list[tuple[int, bytes]] = []
        last = checkpoint
        seen = 0  # the newest valid seq so far: a frame after it must be newer still
        total = sum(path.stat().st_size for _, path in found)
        done = 0
        for index, (first, path) in enumerate(found):
            if progress is not None:
                progress(done, total)
            data = path.read_bytes()
            done += len(data)
            scan = scan_frames(data, after_seq=seen)
            is_last = index == len(found) - 1
            for damage in scan.damage:
                self._report_damage(path, data, damage, cut=is_last and damage.end == len(data))
            tail = scan.tail(len(data))
            if is_last and tail is not None:
                # A torn last write: nothing follows it, and appends must not follow it.
                with open(path, "r+b") as file:
                    file.truncate(tail.start)
                    os.fsync(file.fileno())
            for seq, payload in scan.records:
                seen = seq
                if seq > last:
                    replay.append((seq, payload))
                    last = seq
            self._segments.append((first, path))
        self.last_seq = last
        self._saved_checkpoint = checkpoint
        self.progress = Progress(checkpoint)
        self._start_segment(self.last_seq + 1)
        self.disk_bytes = sum(p.stat().st_size for _, p in self._segments)
        return replay

    def _report_damage(self, segment: Path, data: bytes, damage: Damage, cut: bool) -> None:
        copy = self._copy_aside(segment.name, data, damage)
        problem = (
            f"{segment.name}: {damage.reason}; {'cut' if cut else 'skipped'} bytes "
            f"{damage.start}-{damage.end} ({damage.size} bytes), copied to {copy}"
        )
        self.recovery_problems.append(problem)
        self.recovery_skipped_bytes += damage.size
        log.error("journal damaged: %s", problem)

    def _copy_aside(self, segment: str, data: bytes, damage: Damage) -> Path:
        """The damaged bytes in their own fsynced file, for a person to look at later."""
        directory = self.damaged_directory
        path = directory / f"{segment}.{damage.start}-{damage.end}.bin"
        if path.exists() and path.stat().st_size == damage.size:
            return path  # copied at an earlier start: the segment is still waiting to go
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as file:
            file.write(data[damage.start : damage.end])
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
        return path

    def _read_checkpoint(self) -> int:
        try:
            return int((self.directory / _CHECKPOINT).read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            self.recovery_problems.append("checkpoint file unreadable: replaying everything")
            return 0

    def _start_segment(self, first_seq: int) -> None:
        """Make the segment starting at `first_seq` the active one.

        The new file is opened before the old one is let go, so a failure (EMFILE,
        ENOSPC) leaves the journal appending where it was.
        """
        path = self.directory / f"{_SEGMENT_PREFIX}{first_seq:020d}{_SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            with contextlib.suppress(OSError):  # every byte in it was fsynced already
                os.close(self._fd)
        self._fd, self._active_bytes, self._torn = fd, size, False
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((first_seq, path))

    def expect(self, seq: int, items: int) -> None:
        self.progress.expect(seq, items)

    # --- appending ---------------------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="journal-writer")

    @property
    def full(self) -> bool:
        return self.disk_bytes >= self.max_bytes

    def append(self, payload: bytes, items: int) -> asyncio.Future[int]:
        """Queue a record; the future gives its seq once it is fsynced, in seq order.

        Await it before answering the client. It raises StorageUnavailable when the write
        failed; the record is then not in the journal.
        """
        if self._closed:
            raise LogClosed("journal is closed")
        self.last_seq += 1
        seq = self.last_seq
        self.progress.expect(seq, items)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(seq, encode_frame(seq, payload), future))
        self._wake.set()
        return future

    def acknowledge(self, seq: int, items: int = 1) -> None:
        self.progress.settle(seq, items)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Everything that queued up during the previous fsync shares this one.
                group, self._pending = self._pending, []
                try:
                    await loop.run_in_executor(self._executor, self._write_group, group)
                except OSError as error:  # one that escaped the group write: still a 503
                    self.write_failures += 1
                    failure = StorageUnavailable(f"journal write failed: {_os_error(error)}")
                    failure.__cause__ = error
                    self._refuse(group, failure)
                    continue
                except BaseException as error:
                    self._refuse(group, error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                self.commits += 1
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_result(pending.seq)
            if self._closed:
                return

    def _refuse(self, group: list[_Pending], error: BaseException) -> None:
        # What queued behind the failed write goes too: it was processed after it and may
        # build on its profile changes, and the log keeps processing order.
        group += self._pending
        self._pending = []
        for pending in group:
            if not pending.future.done():
                pending.future.set_exception(
                    error if isinstance(error, Exception) else LogClosed(str(error))
                )
            # Refused to the client, so nothing of it is owed: let the checkpoint pass it.
            self.progress.forget(pending.seq)
        if isinstance(error, StorageUnavailable):
            log.error("%s: %d request(s) refused with 503", error, len(group))
        elif isinstance(error, Exception):
            log.exception("journal write failed: %d request(s) refused", len(group))

    def _write_group(self, group: list[_Pending]) -> None:
        try:
            if self._torn:
                self._cut_back()
            if self._fd is None or self._active_bytes >= self.segment_bytes:
                self._start_segment(group[0].seq)
            self._append(b"".join(p.frame for p in group))
        except OSError as error:
            self.write_failures += 1
            raise StorageUnavailable(f"journal write failed: {_os_error(error)}") from error

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        fd = self._fd
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            if self.fsync:
                os.fdatasync(fd)
        except OSError:
            # Part of the group may be on disk: cut back to the last whole frame now, or
            # before the next write if even that fails, so no frame follows a torn one.
            self._torn = True
            with contextlib.suppress(OSError):
                self._cut_back()
            raise
        self._active_bytes += len(data)
        self.disk_bytes += len(data)

    def _cut_back(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, self._active_bytes)
        if self.fsync:
            os.fsync(self._fd)
        self._torn = False

    # --- checkpoints -------------------------------------------------------------------

    async def save_checkpoint(self, durable_through: int) -> None:
        """Persist the checkpoint and delete the segments it covers.

        It never passes `durable_through`: the caller's other state (profiles) is durable
        only that far, and records past it must be replayed to rebuild it. Raises
        StorageUnavailable when the disk refuses; the previous checkpoint then holds.
        """
        checkpoint = min(self.progress.checkpoint, durable_through)
        if checkpoint <= self._saved_checkpoint:
            return
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._save_checkpoint_sync, checkpoint
        )

    def _save_checkpoint_sync(self, checkpoint: int) -> None:
        try:
            tmp = self.directory / (_CHECKPOINT + ".tmp")
            with open(tmp, "w") as file:
                file.write(str(checkpoint))
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.directory / _CHECKPOINT)
            _fsync_dir(self.directory)
            self._saved_checkpoint = checkpoint
            # A segment can go when the next one starts at or below checkpoint + 1.
            while len(self._segments) > 1 and self._segments[1][0] <= checkpoint + 1:
                path = self._segments[0][1]
                with contextlib.suppress(FileNotFoundError):
                    size = path.stat().st_size
                    path.unlink()
                    self.disk_bytes -= size
                self._segments.pop(0)
        except OSError as error:
            raise StorageUnavailable(f"journal checkpoint failed: {_os_error(error)}") from error

    def stats(self) -> LogStats:
        return LogStats(
            disk_bytes=self.disk_bytes,
            last_seq=self.last_seq,
            checkpoint=self.progress.checkpoint,
            commits=self.commits,
            recovery_problems=list(self.recovery_problems),
            recovery_skipped_bytes=self.recovery_skipped_bytes,
            write_failures=self.write_failures,
            saved_checkpoint=self._saved_checkpoint,
        )

    async def close(self) -> None:
        """Write what is queued and release the file (save the checkpoint before)."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer  # it writes what is pending, then returns
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # nothing unsynced is in it
                os.close(fd)
