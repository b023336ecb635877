"""The write-ahead journal: framed records, group-commit fsync, checkpoints, recovery.

A record is written and fsynced before its request is answered 200. Each record is
framed as [length u32][crc32 u32][seq u64][payload]: a torn write or a flipped bit at
the tail is detected on recovery, reported and cut off, and every record before it is
kept. Segments roll at `segment_bytes`; a segment whose records are all at or below the
checkpoint is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("forwarder.journal")

_HEADER = struct.Struct("<IIQ")
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 256 * 1024 * 1024
_SEGMENT_PREFIX = "segment-"
_SEGMENT_SUFFIX = ".log"
_CHECKPOINT = "checkpoint"


# --- framing (pure) ----------------------------------------------------------------------


def encode_frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))
    return _HEADER.pack(len(payload), crc, seq) + payload


@dataclass(frozen=True, slots=True)
class ScanResult:
    records: list[tuple[int, bytes]]
    good_bytes: int  # bytes of whole, valid records from the start
    problem: str | None  # why the scan stopped early, if it did


def scan_frames(data: bytes | memoryview) -> ScanResult:
    """Every valid record from the start; stops at the first torn or corrupt one."""
    view = memoryview(data)
    records: list[tuple[int, bytes]] = []
    offset = 0
    total = len(view)
    last_seq = -1
    while offset < total:
        if total - offset < HEADER_SIZE:
            return ScanResult(records, offset, f"torn header at byte {offset}")
        length, crc, seq = _HEADER.unpack_from(view, offset)
        end = offset + HEADER_SIZE + length
        if length > MAX_RECORD_BYTES:
            return ScanResult(records, offset, f"impossible length {length} at byte {offset}")
        if end > total:
            return ScanResult(records, offset, f"torn record (seq {seq}) at byte {offset}")
        payload = bytes(view[offset + HEADER_SIZE : end])
        if zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little"))) != crc:
            return ScanResult(records, offset, f"checksum mismatch at byte {offset}")
        if seq <= last_seq:
            return ScanResult(records, offset, f"sequence goes back ({seq} after {last_seq})")
        records.append((seq, payload))
        last_seq = seq
        offset = end
    return ScanResult(records, offset, None)


# --- checkpoint tracking (pure) --------------------------------------------------------


class Progress:
    """Which records are fully settled; the checkpoint is the highest seq with all before it.

    A record is settled when every item routed from it was delivered or dead-lettered,
    and it was sealed (routing of the whole record finished).
    """

    def __init__(self, checkpoint: int) -> None:
        self.checkpoint = checkpoint
        self._outstanding: dict[int, int] = {}
        self._sealed: set[int] = set()
        self._finished: set[int] = set()
        self._next = checkpoint + 1

    def add(self, seq: int, items: int = 1) -> None:
        self._outstanding[seq] = self._outstanding.get(seq, 0) + items

    def seal(self, seq: int) -> None:
        self._sealed.add(seq)
        self._maybe_finish(seq)

    def settle(self, seq: int, items: int = 1) -> None:
        self._outstanding[seq] = self._outstanding.get(seq, 0) - items
        self._maybe_finish(seq)

    def _maybe_finish(self, seq: int) -> None:
        if seq in self._sealed and self._outstanding.get(seq, 0) <= 0:
            self._sealed.discard(seq)
            self._outstanding.pop(seq, None)
            self._finished.add(seq)
            while self._next in self._finished:
                self._finished.discard(self._next)
                self.checkpoint = self._next
                self._next += 1

    @property
    def open_records(self) -> int:
        return len(self._outstanding) + len(self._sealed)


# --- the journal (I/O) -------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    seq: int
    frame: bytes
    on_durable: Callable[[], None] | None
    future: asyncio.Future[None]


class JournalFull(Exception):
    pass


class Journal:
    """Appends records with group-commit fsync; recovers and checkpoints them."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
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
        # The profile store's durable point: a checkpoint never passes it, so profile
        # changes that were not yet in SQLite are replayed too.
        self.profiles_durable_through: Callable[[], int] = lambda: self.last_seq

    # --- recovery ----------------------------------------------------------------------

    async def open(self) -> list[tuple[int, bytes]]:
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

    # --- appending ---------------------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="journal-writer")

    @property
    def full(self) -> bool:
        return self.disk_bytes >= self.max_bytes

    def append(self, payload: bytes, on_durable: Callable[[], None] | None = None) -> asyncio.Future[None]:
        """Queue a record; `on_durable` runs (in seq order) once it is fsynced.

        Await the returned future before answering the client.
        """
        if self._closed:
            raise JournalFull("journal is closed")
        self.last_seq += 1
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(self.last_seq, encode_frame(self.last_seq, payload), on_durable, future))
        self._wake.set()
        return future

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
                                error if isinstance(error, Exception) else JournalFull(str(error))
                            )
                    if not isinstance(error, Exception):
                        raise
                    log.exception("journal write failed: %d request(s) answered with an error", len(group))
                    for pending in group:
                        # Refused to the client, so nothing of it is owed: let the
                        # checkpoint move past it.
                        self.progress.seal(pending.seq)
                    continue
                self.commits += 1
                for pending in group:
                    if pending.on_durable is not None:
                        pending.on_durable()
                    if not pending.future.done():
                        pending.future.set_result(None)
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

    def checkpoint_now(self) -> int:
        return min(self.progress.checkpoint, self.profiles_durable_through())

    async def save_checkpoint(self) -> None:
        """Persist the checkpoint and delete the segments it covers."""
        checkpoint = self.checkpoint_now()
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

    async def close(self) -> None:
        """Write what is queued, save the checkpoint, release the file."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer  # it writes what is pending, then returns
        await self.save_checkpoint()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
