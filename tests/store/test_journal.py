"""The file journal: group commit, checkpoints, failed writes cut back, recovery past damage."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from typing_extensions import Buffer

from forwarder.errors import StorageUnavailable
from forwarder.store.framing import HEADER_SIZE
from forwarder.store.journal import Journal

SEGMENT = 64 * 1024 * 1024


async def started(path: Path, **settings: int) -> Journal:
    """A journal recovered (from whatever `path` holds) and taking appends."""
    journal = journal_at(path, **settings)
    await journal.recover()
    journal.start()
    return journal


def journal_at(path: Path, max_bytes: int = 10**9, segment_bytes: int = SEGMENT) -> Journal:
    return Journal(path, max_bytes=max_bytes, segment_bytes=segment_bytes)


async def test_group_commit_shares_fsyncs_and_survives_reopen(tmp_path: Path) -> None:
    journal = journal_at(tmp_path)
    assert await journal.recover() == []
    journal.start()
    durable_order: list[int] = []
    futures = [journal.append(f"r{n}".encode(), 1) for n in range(1, 201)]
    for future in futures:
        future.add_done_callback(lambda done: durable_order.append(done.result()))
    assert await asyncio.gather(*futures) == list(range(1, 201))
    assert durable_order == list(range(1, 201))
    assert journal.commits < 200  # appends made while one fsync ran share the next one
    await journal.close()

    again = journal_at(tmp_path)
    records = await again.recover()
    assert [seq for seq, _ in records] == list(range(1, 201))
    assert records[0][1] == b"r1"
    await again.close()


async def test_checkpoint_limits_replay_and_removes_segments(tmp_path: Path) -> None:
    journal = await started(tmp_path, segment_bytes=200)
    for n in range(1, 31):
        assert await journal.append(b"x" * 40, 1) == n
    segments_before = len(list(tmp_path.glob("segment-*.log")))
    assert segments_before > 3
    for n in range(1, 21):
        journal.acknowledge(n)
    await journal.save_checkpoint(durable_through=25)
    assert len(list(tmp_path.glob("segment-*.log"))) < segments_before
    await journal.close()

    again = journal_at(tmp_path, segment_bytes=200)
    records = await again.recover()
    assert [seq for seq, _ in records] == list(range(21, 31))
    # New appends continue the sequence.
    again.start()
    await again.append(b"next", 0)
    assert again.last_seq == 31
    await again.close()


async def test_truncated_and_corrupted_tails_are_cut_on_open(tmp_path: Path) -> None:
    journal = await started(tmp_path)
    for _ in range(5):
        await journal.append(b"payload", 1)
    await journal.close()
    (segment,) = tmp_path.glob("segment-*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # a torn last write

    again = journal_at(tmp_path)
    records = await again.recover()
    assert [seq for seq, _ in records] == [1, 2, 3, 4]
    assert again.recovery_problems and "torn" in again.recovery_problems[0]
    again.start()
    await again.append(b"after the cut", 1)
    await again.close()

    # Corrupt the new last record: it is reported and skipped, the others stay.
    (segment, *_) = sorted(tmp_path.glob("segment-*.log"))
    segments = sorted(tmp_path.glob("segment-*.log"))
    last = segments[-1]
    raw = bytearray(last.read_bytes())
    raw[-1] ^= 0xFF
    last.write_bytes(bytes(raw))
    third = journal_at(tmp_path)
    records = await third.recover()
    assert [seq for seq, _ in records] == [1, 2, 3, 4]
    assert any("checksum" in p for p in third.recovery_problems)
    await third.close()


async def test_disk_cap_reports_full(tmp_path: Path) -> None:
    journal = await started(tmp_path, max_bytes=100)
    assert not journal.full
    await journal.append(b"y" * 200, 1)
    assert journal.full
    await journal.close()


# --- failed writes are cut back ---------------------------------------------------------


class FailingWrites:
    """os.write/fdatasync/ftruncate that fail on the journal's segment file while armed."""

    def __init__(self, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.journal = journal
        self.write_after: int | None = None  # bytes let through before ENOSPC
        self.fail_sync = False
        self.fail_truncates = 0
        real_write, real_sync, real_truncate = os.write, os.fdatasync, os.ftruncate

        def write(fd: int, data: Buffer) -> int:
            if fd == journal._fd and self.write_after is not None:
                view = memoryview(data)
                if self.write_after == 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                written = real_write(fd, view[: self.write_after])
                self.write_after -= written
                return written
            return real_write(fd, data)

        def fdatasync(fd: int) -> None:
            if fd == journal._fd and self.fail_sync:
                raise OSError(errno.EIO, "Input/output error")
            real_sync(fd)

        def ftruncate(fd: int, length: int) -> None:
            if fd == journal._fd and self.fail_truncates:
                self.fail_truncates -= 1
                raise OSError(errno.EIO, "Input/output error")
            real_truncate(fd, length)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "ftruncate", ftruncate)

    def disarm(self) -> None:
        self.write_after, self.fail_sync, self.fail_truncates = None, False, 0


def segment_bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("segment-*.log"))


async def test_a_short_write_is_cut_back_and_later_groups_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await started(tmp_path)
    for n in range(5):
        await journal.append(f"good {n}".encode() * 50, 1)
    size = segment_bytes_on_disk(tmp_path)
    faults = FailingWrites(journal, monkeypatch)
    faults.write_after = 100  # a torn frame: 100 bytes land, then the disk is full
    refused = [journal.append(b"lost" * 200, 1) for _ in range(3)]
    for future in refused:
        with pytest.raises(StorageUnavailable, match="ENOSPC"):
            await future
    assert segment_bytes_on_disk(tmp_path) == size  # not one byte of the torn group stays
    assert journal.stats().write_failures == 1
    faults.disarm()
    assert await journal.append(b"after the fault", 1) == 9
    await journal.close()

    again = journal_at(tmp_path)
    records = await again.recover()
    assert [seq for seq, _ in records] == [1, 2, 3, 4, 5, 9]
    assert again.recovery_problems == []
    await again.close()


async def test_a_failed_fsync_is_cut_back_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await started(tmp_path)
    await journal.append(b"kept", 1)
    size = segment_bytes_on_disk(tmp_path)
    faults = FailingWrites(journal, monkeypatch)
    faults.fail_sync = True
    with pytest.raises(StorageUnavailable, match="EIO"):
        await journal.append(b"written, never synced", 1)
    assert segment_bytes_on_disk(tmp_path) == size
    faults.disarm()
    assert await journal.append(b"next", 1) == 3
    await journal.close()
    again = journal_at(tmp_path)
    assert [seq for seq, _ in await again.recover()] == [1, 3]
    await again.close()


async def test_when_the_cut_fails_the_next_write_cuts_first_or_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await started(tmp_path)
    await journal.append(b"kept", 1)
    size = segment_bytes_on_disk(tmp_path)
    faults = FailingWrites(journal, monkeypatch)
    faults.write_after = 10
    faults.fail_truncates = 2  # the cut after the failure, and the retry before the next
    with pytest.raises(StorageUnavailable):
        await journal.append(b"torn" * 100, 1)
    assert segment_bytes_on_disk(tmp_path) == size + 10  # torn bytes still there...
    faults.write_after = None
    with pytest.raises(StorageUnavailable):  # ...so nothing may be appended after them
        await journal.append(b"refused: the torn bytes could not be cut", 1)
    assert segment_bytes_on_disk(tmp_path) == size + 10
    assert await journal.append(b"the cut worked this time", 1) == 4
    await journal.close()
    again = journal_at(tmp_path)
    assert [seq for seq, _ in await again.recover()] == [1, 4]
    assert again.recovery_problems == []
    await again.close()


async def test_a_failed_checkpoint_raises_storage_unavailable_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await started(tmp_path)
    for n in range(1, 4):
        await journal.append(b"x", 1)
        journal.acknowledge(n)
    real_replace = os.replace

    def read_only(src: str | Path, dst: str | Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(StorageUnavailable, match="EROFS"):
        await journal.save_checkpoint(durable_through=3)
    assert journal.stats().saved_checkpoint == 0
    monkeypatch.setattr(os, "replace", real_replace)
    await journal.save_checkpoint(durable_through=3)
    assert journal.stats().saved_checkpoint == 3
    await journal.close()


# --- recovery keeps what follows damage ----------------------------------------------------


async def write_records(path: Path, count: int, segment_bytes: int = SEGMENT) -> None:
    journal = journal_at(path, segment_bytes=segment_bytes)
    await journal.recover()
    journal.start()
    for n in range(1, count + 1):
        await journal.append(f"record {n:04d} ".encode() * 20, 1)
    await journal.close()


async def test_flipped_bytes_mid_segment_cost_one_record_and_are_copied_aside(
    tmp_path: Path,
) -> None:
    await write_records(tmp_path, 30)
    (segment,) = tmp_path.glob("segment-*.log")
    raw = bytearray(segment.read_bytes())
    frame_size = len(raw) // 30  # every record here has the same size
    middle = 14 * frame_size + HEADER_SIZE + 40  # inside record 15's payload
    raw[middle : middle + 4] = bytes(b ^ 0x5A for b in raw[middle : middle + 4])
    segment.write_bytes(bytes(raw))

    journal = journal_at(tmp_path)
    records = await journal.recover()
    assert [seq for seq, _ in records] == [n for n in range(1, 31) if n != 15]
    assert segment.stat().st_size == len(raw)  # not cut in the middle
    (copy,) = (tmp_path / "damaged").iterdir()
    assert copy.name == f"{segment.name}.{14 * frame_size}-{15 * frame_size}.bin"
    assert copy.read_bytes() == bytes(raw[14 * frame_size : 15 * frame_size])
    stats = journal.stats()
    assert stats.recovery_skipped_bytes == frame_size
    assert len(stats.recovery_problems) == 1 and "checksum" in stats.recovery_problems[0]
    # The lost seq holds nothing back: once the rest settles the checkpoint passes it.
    for seq, _ in records:
        journal.expect(seq, 1)
    for seq, _ in records:
        journal.acknowledge(seq)
    assert journal.progress.checkpoint == 30
    await journal.close()

    # A second start reports the damage again but copies nothing twice.
    again = journal_at(tmp_path)
    assert len(await again.recover()) == 29
    assert len(list((tmp_path / "damaged").iterdir())) == 1
    await again.close()


async def test_a_damaged_tail_is_cut_only_in_the_last_segment(tmp_path: Path) -> None:
    await write_records(tmp_path, 12, segment_bytes=600)
    segments = sorted(tmp_path.glob("segment-*.log"))
    assert len(segments) >= 3
    first, last = segments[0], segments[-1]
    first_size, last_size = first.stat().st_size, last.stat().st_size
    for path in (first, last):
        raw = bytearray(path.read_bytes())
        raw[-3] ^= 0xFF  # the final record of each segment
        path.write_bytes(bytes(raw))

    journal = journal_at(tmp_path, segment_bytes=600)
    records = await journal.recover()
    assert len(records) == 10
    assert first.stat().st_size == first_size  # damage in an older segment stays in place
    assert last.stat().st_size < last_size  # a torn-looking tail of the last one is cut
    assert len(list((tmp_path / "damaged").iterdir())) == 2
    problems = journal.stats().recovery_problems
    assert any("skipped" in p and first.name in p for p in problems)
    assert any("cut" in p and last.name in p for p in problems)
    await journal.close()
