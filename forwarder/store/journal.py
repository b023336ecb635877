"""The file journal: framed records in segments, group-commit fsync, checkpoints, recovery.

A record is written and fsynced before its request is answered 200. Segments roll at
`segment_bytes`; a segment whose records are all at or below the checkpoint is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from forwarder.errors import LogClosed
from forwarder.store.framing import encode_frame, scan_frames
from forwarder.store.log import LogStats
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


class Journal:
    """The durable log on local files: appends with group-commit fsync, recovery, checkpoints."""

    durable = True

    def __init__(
        self, directory: Path, max_bytes: int, segment_bytes: int, fsync: bool = True
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.last_seq = 0
        self.progress = Progress(0)
        self.recovery_problems: list[str] = []
        self.disk_bytes = 0
        self.commits = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._fd: int | None = None
        self._active_bytes = 0
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._saved_checkpoint = 0
        self._closed = False

    # --- recovery ----------------------------------------------------------------------

    async def recover(self) -> list[tuple[int, bytes]]:
        """Read what is after the checkpoint (in seq order) and get ready to append."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> list[tuple[int, bytes]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = self._read_checkpoint()
        found = sorted(
            (int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), p)
            for p in self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
        )
        replay: list[tuple[int, bytes]] = []
        last = checkpoint
        for first, path in found:
            data = path.read_bytes()
            scan = scan_frames(data)
            if scan.problem is not None:
                problem = (
                    f"{path.name}: {scan.problem}; kept {len(scan.records)} record(s) before it, "
                    f"cut {len(data) - scan.good_bytes} byte(s)"
                )
                self.recovery_problems.append(problem)
                log.error("journal damaged: %s", problem)
                with open(path, "r+b") as file:
                    file.truncate(scan.good_bytes)
                    os.fsync(file.fileno())
            for seq, payload in scan.records:
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

    def _read_checkpoint(self) -> int:
        try:
            return int((self.directory / _CHECKPOINT).read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            self.recovery_problems.append("checkpoint file unreadable: replaying everything")
            return 0

    def _start_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / f"{_SEGMENT_PREFIX}{first_seq:020d}{_SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._active_bytes = os.fstat(self._fd).st_size
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((first_seq, path))
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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

        Await it before answering the client.
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
                except BaseException as error:
                    for pending in group:
                        if not pending.future.done():
                            pending.future.set_exception(
                                error if isinstance(error, Exception) else LogClosed(str(error))
                            )
                    if not isinstance(error, Exception):
                        raise
                    log.exception(
                        "journal write failed: %d request(s) answered with an error", len(group)
                    )
                    for pending in group:
                        # Refused to the client, so nothing of it is owed: let the
                        # checkpoint move past it.
                        self.progress.forget(pending.seq)
                    continue
                self.commits += 1
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_result(pending.seq)
            if self._closed:
                return

    def _write_group(self, group: list[_Pending]) -> None:
        assert self._fd is not None
        if self._active_bytes >= self.segment_bytes:
            self._start_segment(group[0].seq)
        data = b"".join(p.frame for p in group)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fdatasync(self._fd)
        self._active_bytes += len(data)
        self.disk_bytes += len(data)

    # --- checkpoints -------------------------------------------------------------------

    async def save_checkpoint(self, durable_through: int) -> None:
        """Persist the checkpoint and delete the segments it covers.

        It never passes `durable_through`: the caller's other state (profiles) is durable
        only that far, and records past it must be replayed to rebuild it.
        """
        checkpoint = min(self.progress.checkpoint, durable_through)
        if checkpoint <= self._saved_checkpoint:
            return
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._save_checkpoint_sync, checkpoint
        )

    def _save_checkpoint_sync(self, checkpoint: int) -> None:
        tmp = self.directory / (_CHECKPOINT + ".tmp")
        with open(tmp, "w") as file:
            file.write(str(checkpoint))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.directory / _CHECKPOINT)
        self._fsync_dir()
        self._saved_checkpoint = checkpoint
        # A segment can go when the next one starts at or below checkpoint + 1.
        while len(self._segments) > 1 and self._segments[1][0] <= checkpoint + 1:
            _, path = self._segments.pop(0)
            try:
                self.disk_bytes -= path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass

    def stats(self) -> LogStats:
        return LogStats(
            disk_bytes=self.disk_bytes,
            last_seq=self.last_seq,
            checkpoint=self.progress.checkpoint,
            commits=self.commits,
            recovery_problems=list(self.recovery_problems),
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
            os.close(self._fd)
            self._fd = None
