"""Journal: framing, torn and corrupt tails, group commit, checkpoints and segment removal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.journal import HEADER_SIZE, Journal, Progress, encode_frame, scan_frames


def frames(n: int) -> bytes:
    return b"".join(encode_frame(seq, f"record {seq}".encode()) for seq in range(1, n + 1))


def test_scan_reads_back_every_record() -> None:
    scan = scan_frames(frames(5))
    assert [seq for seq, _ in scan.records] == [1, 2, 3, 4, 5]
    assert scan.problem is None


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_torn_tail_keeps_the_records_before_it(cut: int) -> None:
    data = frames(3) + encode_frame(4, b"the last one")[:cut]
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.good_bytes == len(frames(3))
    assert scan.problem is not None and "torn" in scan.problem


def test_corrupt_tail_is_detected_by_checksum() -> None:
    last = bytearray(encode_frame(4, b"the last one"))
    last[-2] ^= 0x40
    scan = scan_frames(frames(3) + bytes(last))
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.problem is not None and "checksum" in scan.problem


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 10))
def test_scan_never_raises_on_garbage(noise: bytes, keep: int) -> None:
    scan = scan_frames(frames(keep) + noise)
    assert [seq for seq, _ in scan.records][:keep] == list(range(1, keep + 1))


def test_progress_checkpoint_waits_for_the_oldest_record() -> None:
    progress = Progress(0)
    for seq in (1, 2, 3):
        progress.add(seq, 2)
        progress.seal(seq)
    progress.settle(2, 2)
    progress.settle(3, 2)
    assert progress.checkpoint == 0
    progress.settle(1)
    assert progress.checkpoint == 0
    progress.settle(1)
    assert progress.checkpoint == 3
    progress.add(4, 0)
    progress.seal(4)
    assert progress.checkpoint == 4


async def test_group_commit_shares_fsyncs_and_survives_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    assert await journal.open() == []
    journal.start()
    durable_order: list[int] = []
    futures = [
        journal.append(f"r{n}".encode(), on_durable=lambda n=n: durable_order.append(n))
        for n in range(1, 201)
    ]
    await asyncio.gather(*futures)
    assert durable_order == list(range(1, 201))
    assert journal.commits < 200  # appends made while one fsync ran share the next one
    await journal.close()

    again = Journal(tmp_path, max_bytes=10**9)
    records = await again.open()
    assert [seq for seq, _ in records] == list(range(1, 201))
    assert records[0][1] == b"r1"
    await again.close()


async def test_checkpoint_limits_replay_and_removes_segments(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9, segment_bytes=200)
    await journal.open()
    journal.start()
    for n in range(1, 31):
        await journal.append(b"x" * 40)
        journal.progress.add(n, 1)
        journal.progress.seal(n)
    segments_before = len(list(tmp_path.glob("segment-*.log")))
    assert segments_before > 3
    for n in range(1, 21):
        journal.progress.settle(n)
    await journal.save_checkpoint()
    assert len(list(tmp_path.glob("segment-*.log"))) < segments_before
    await journal.close()

    again = Journal(tmp_path, max_bytes=10**9, segment_bytes=200)
    records = await again.open()
    assert [seq for seq, _ in records] == list(range(21, 31))
    # New appends continue the sequence.
    again.start()
    await again.append(b"next")
    assert again.last_seq == 31
    await again.close()


async def test_truncated_and_corrupted_tails_are_cut_on_open(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=10**9)
    await journal.open()
    journal.start()
    for _ in range(5):
        await journal.append(b"payload")
    await journal.close()
    (segment,) = tmp_path.glob("segment-*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # a torn last write

    again = Journal(tmp_path, max_bytes=10**9)
    records = await again.open()
    assert [seq for seq, _ in records] == [1, 2, 3, 4]
    assert again.recovery_problems and "torn" in again.recovery_problems[0]
    again.start()
    await again.append(b"after the cut")
    await again.close()

    # Corrupt the new last record: it is reported and skipped, the others stay.
    (segment, *_) = sorted(tmp_path.glob("segment-*.log"))
    segments = sorted(tmp_path.glob("segment-*.log"))
    last = segments[-1]
    raw = bytearray(last.read_bytes())
    raw[-1] ^= 0xFF
    last.write_bytes(bytes(raw))
    third = Journal(tmp_path, max_bytes=10**9)
    records = await third.open()
    assert [seq for seq, _ in records] == [1, 2, 3, 4]
    assert any("checksum" in p for p in third.recovery_problems)
    await third.close()


async def test_disk_cap_reports_full(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=100)
    await journal.open()
    journal.start()
    assert not journal.full
    await journal.append(b"y" * 200)
    assert journal.full
    await journal.close()
