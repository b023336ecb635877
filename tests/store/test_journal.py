"""The file journal: group commit, reopen, checkpoints and segment removal, damaged tails."""

from __future__ import annotations

import asyncio
from pathlib import Path

from forwarder.store.journal import Journal

SEGMENT = 64 * 1024 * 1024


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
    journal = journal_at(tmp_path, segment_bytes=200)
    await journal.recover()
    journal.start()
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
    journal = journal_at(tmp_path)
    await journal.recover()
    journal.start()
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
    journal = journal_at(tmp_path, max_bytes=100)
    await journal.recover()
    journal.start()
    assert not journal.full
    await journal.append(b"y" * 200, 1)
    assert journal.full
    await journal.close()
